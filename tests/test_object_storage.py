"""Inputs where the data lives: s3:// (a real S3-compatible server on 127.0.0.1: moto's server
mode, as s3fs's own tests use), http:// (a real ``http.server`` on 127.0.0.1), and the rules
they share with local paths: order, deduplication, decode rules, error records, options."""

from __future__ import annotations

import functools
import http.server
import io
import json
import logging
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import LABELLED, SAMPLES, free_port, parse_jsonl
from imgclassify.cli import app
from imgclassify.errors import ImageError, UsageError
from imgclassify.system.storage import Storage, StorageError, is_url, parse_storage_options, url_scheme

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

LITE = ["-m", "efficientnet_lite0", "-d", "cpu", "-f", "jsonl"]
BUCKET = "photos-bucket"
#: the photos uploaded under photos/ (a nested one too): natural order puts "img2" before "img10"
PHOTOS = sorted(LABELLED.glob("*.JPEG"))[:5]
LAYOUT = {
    "photos/img2.jpg": PHOTOS[0],
    "photos/img10.jpg": PHOTOS[1],
    "photos/IMG3.JPEG": PHOTOS[2],
    "photos/nested/a1.jpg": PHOTOS[3],
    "photos/nested/b.jpeg": PHOTOS[4],
    "photos/notes.txt": None,
}
#: the order a local folder of the same layout is walked in
ORDER = ["img2.jpg", "IMG3.JPEG", "img10.jpg", "nested/a1.jpg", "nested/b.jpeg"]


def invoke(runner: CliRunner, *args: str, input: str | None = None) -> Any:
    return runner.invoke(app, list(args), input=input, catch_exceptions=False)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1, with a bucket of photos uploaded by boto3 (not by the code under test)."""
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    for key, source in LAYOUT.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=source.read_bytes() if source else b"a note, not a photo\n")
    jpeg = (SAMPLES / "kitten.jpg").read_bytes()
    client.put_object(Bucket=BUCKET, Key="bad/truncated.jpg", Body=jpeg[: len(jpeg) // 3])
    client.put_object(Bucket=BUCKET, Key="bad/empty.jpg", Body=b"")
    client.put_object(Bucket=BUCKET, Key="bad/notes.jpg", Body=b"this is not an image\n")
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """The AWS environment pointing at the local server (dummy credentials, no profile files)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return s3_endpoint


@pytest.fixture(scope="module")
def local_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same layout in a local folder: what the s3:// runs must match."""
    root = tmp_path_factory.mktemp("local") / "photos"
    for key, source in LAYOUT.items():
        target = root / key.removeprefix("photos/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if source is None:
            target.write_text("a note, not a photo\n")
        else:
            shutil.copyfile(source, target)
    return root


@pytest.fixture(scope="module")
def local_records(local_copy: Path) -> list[dict[str, Any]]:
    result = CliRunner().invoke(app, ["predict", str(local_copy), *LITE, "-k", "3"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return parse_jsonl(result.stdout)


@pytest.fixture
def http_base() -> Iterator[str]:
    """``http.server`` on 127.0.0.1 serving samples/."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(SAMPLES)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def without_path(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key != "path"}


# -- URLs and options, no server -----------------------------------------------------------------


def test_urls_are_told_from_local_paths() -> None:
    assert url_scheme("s3://b/k.jpg") == "s3" and url_scheme("HTTPS://host/a.jpg") == "https"
    assert all(is_url(u) for u in ("gs://b/k", "az://container/blob", "abfs://c/b", "http://h/x"))
    assert not any(is_url(p) for p in ("photos/a.jpg", "C:\\photos\\a.jpg", "/abs/s3://x", "ftp://h/x", "-"))


def test_storage_options_parse_json_values_and_dotted_keys() -> None:
    options = parse_storage_options(
        ["anon=true", "endpoint_url=http://127.0.0.1:9000", "client_kwargs.region_name=eu-west-1",
         "default_block_size=1024", 'key="123"', "token=a=b"]
    )  # fmt: skip
    assert options == {
        "anon": True, "endpoint_url": "http://127.0.0.1:9000", "client_kwargs": {"region_name": "eu-west-1"},
        "default_block_size": 1024, "key": "123", "token": "a=b",
    }  # fmt: skip
    for bad in ("no-equals", "=value", "a..b=1"):
        with pytest.raises(UsageError, match="KEY=VALUE"):
            parse_storage_options([bad])
    secret = Storage({"secret": "hunter2-not-to-be-shown"})
    assert "hunter2" not in repr(secret) and secret.option_keys == ["secret"]


def test_a_missing_filesystem_names_its_extra(monkeypatch: pytest.MonkeyPatch, runner: CliRunner) -> None:
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # import gcsfs fails, installed or not
    with pytest.raises(StorageError, match=r"pip install 'imgclassify\[gcs\]'"):
        Storage().filesystem("gs://bucket/photos/")
    result = invoke(runner, "predict", "gs://bucket/photos/", *LITE)
    assert result.exit_code == 2
    assert "gs:// needs gcsfs (the gcs extra)" in result.stderr and "pipx inject imgclassify gcsfs" in result.stderr


def test_what_urls_do_not_work_with_is_refused_before_the_model_loads(runner: CliRunner, tmp_path: Path) -> None:
    for extra, message in ((["--sort-into", str(tmp_path / "sorted")], "--sort-into sorts local files only"),):
        result = invoke(runner, "predict", "http://127.0.0.1:9/a.jpg", *LITE, *extra)
        assert result.exit_code == 2 and message in result.stderr, result.stderr


def test_reads_run_ahead_bounded_and_in_order() -> None:
    """The fetch stage: many reads in flight, never more than its window ahead of the consumer."""
    from imgclassify.decode.fetching import fetch_window, iter_fetched_batches

    lock, state = threading.Lock(), {"in_flight": 0, "most": 0, "read": 0}
    jpeg = (SAMPLES / "kitten_small.jpg").read_bytes()

    class CountingStorage(Storage):
        def read(self, url: str, *, limit: int = 0) -> bytes:
            with lock:
                state["in_flight"] += 1
                state["most"] = max(state["most"], state["in_flight"])
                state["read"] += 1
            threading.Event().wait(0.01)
            with lock:
                state["in_flight"] -= 1
            if url.endswith("missing.jpg"):
                raise ImageError("object not found")
            return jpeg

    from imgclassify.decode.decoder import Decoder
    from imgclassify.decode.preprocess import Interpolation, PreprocessConfig

    config = PreprocessConfig(64, 56, Interpolation.BILINEAR, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    paths = [f"s3://b/{i}.jpg" for i in range(40)] + ["s3://b/missing.jpg", str(SAMPLES / "kitten_small.jpg")]
    batches = iter_fetched_batches(paths, Decoder(config), CountingStorage(), batch_size=4, threads=2, fetchers=8)
    first = next(batches)
    assert first.indices == [0, 1, 2, 3] and not first.errors
    threading.Event().wait(0.5)  # the model busy on the first batch: the reads go on, as far as the windows let them
    # the batch taken, the decode window (a batch and one per thread: 6), the fetch window (two batches, at least
    # one per read thread: 8): never all 42 at once
    assert fetch_window(4, 8) == 8 and fetch_window(4, 32) == 32
    assert 4 + 6 + 8 >= state["read"] >= 8
    rest = list(batches)
    assert [i for b in [first, *rest] for i in b.indices] == list(range(len(paths)))
    assert rest[-1].errors == {40: "object not found"} and rest[-1].tensor.shape[0] == 1
    assert 1 < state["most"] <= 8


# -- s3:// on the local server -------------------------------------------------------------------


def test_prefix_gives_the_same_records_as_the_local_folder(
    s3: str, runner: CliRunner, local_copy: Path, local_records: list[dict[str, Any]]
) -> None:
    result = invoke(runner, "predict", f"s3://{BUCKET}/photos/", *LITE, "-k", "3")
    assert result.exit_code == 0, result.stderr
    records = parse_jsonl(result.stdout)
    assert [r["path"] for r in records] == [f"s3://{BUCKET}/photos/{name}" for name in ORDER]
    assert [Path(r["path"]).relative_to(local_copy).as_posix() for r in local_records] == ORDER
    # the same classes and probabilities, top-3 included, to the last digit written
    assert [without_path(r) for r in records] == [without_path(r) for r in local_records]
    assert "5 classified, 0 failed, 1 non-image file skipped" in result.stderr


def test_a_missing_key_is_an_error_record_and_the_others_are_classified(s3: str, runner: CliRunner) -> None:
    missing = f"s3://{BUCKET}/photos/no-such-photo.jpg"
    result = invoke(
        runner, "predict", f"s3://{BUCKET}/photos/img2.jpg", missing, f"s3://{BUCKET}/photos/img10.jpg", *LITE
    )
    assert result.exit_code == 1
    records = parse_jsonl(result.stdout)
    assert [r["path"] for r in records] == [
        f"s3://{BUCKET}/photos/img2.jpg",
        missing,
        f"s3://{BUCKET}/photos/img10.jpg",
    ]
    assert records[1]["error"] == "object not found" and records[1]["class_id"] is None
    assert records[0]["class_id"] is not None and records[2]["class_id"] is not None
    assert "2 classified, 1 failed" in result.stderr


def test_bad_objects_get_the_errors_local_files_get(s3: str, runner: CliRunner, tmp_path: Path) -> None:
    jpeg = (SAMPLES / "kitten.jpg").read_bytes()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "empty.jpg").write_bytes(b"")
    (tmp_path / "bad" / "notes.jpg").write_bytes(b"this is not an image\n")
    (tmp_path / "bad" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    for extra in ([], ["--allow-truncated"], ["--max-pixels", "1000"]):
        remote = parse_jsonl(invoke(runner, "predict", f"s3://{BUCKET}/bad/", *LITE, *extra).stdout)
        local = parse_jsonl(invoke(runner, "predict", str(tmp_path / "bad"), *LITE, *extra).stdout)
        assert [str(r["path"]).removeprefix(f"s3://{BUCKET}/") for r in remote] == [
            "bad/empty.jpg",
            "bad/notes.jpg",
            "bad/truncated.jpg",
        ]
        assert [without_path(r) for r in remote] == [without_path(r) for r in local], extra
    assert local[0]["error"] == "empty file"


def test_globs_and_duplicates_follow_the_local_rules(s3: str, runner: CliRunner) -> None:
    result = invoke(
        runner, "predict", f"s3://{BUCKET}/photos/*.jpg", f"s3://{BUCKET}/photos/**/*.jpeg",
        f"s3://{BUCKET}/photos/img2.jpg", f"s3://{BUCKET}/photos/*.gif", *LITE,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    paths = [r["path"] for r in parse_jsonl(result.stdout)]
    assert paths == [f"s3://{BUCKET}/photos/{name}" for name in ("img2.jpg", "img10.jpg", "nested/b.jpeg")]
    assert f"no file matches s3://{BUCKET}/photos/*.gif" in result.stderr


def test_stdin_lists_mix_s3_and_local_paths(s3: str, runner: CliRunner, local_copy: Path) -> None:
    listing = f"s3://{BUCKET}/photos/nested/\n{local_copy / 'img2.jpg'}\n\ns3://{BUCKET}/photos/IMG3.JPEG\n"
    result = invoke(runner, "predict", "-", *LITE, input=listing)
    assert result.exit_code == 0, result.stderr
    records = parse_jsonl(result.stdout)
    assert [r["path"] for r in records] == [
        f"s3://{BUCKET}/photos/nested/a1.jpg", f"s3://{BUCKET}/photos/nested/b.jpeg",
        str(local_copy / "img2.jpg"), f"s3://{BUCKET}/photos/IMG3.JPEG",
    ]  # fmt: skip
    assert all(r["class_id"] is not None for r in records)


def test_shards_split_urls_by_their_hash(s3: str) -> None:
    from imgclassify.run.inputs import expand_inputs
    from imgclassify.run.shards import Shard, shard_hash

    paths = expand_inputs([f"s3://{BUCKET}/photos/"]).paths
    shares = [Shard(k, 3).select(paths) for k in (1, 2, 3)]
    assert sorted(p for share in shares for p in share) == sorted(paths)
    for k, share in enumerate(shares, 1):
        assert all(shard_hash(p) % 3 == k - 1 for p in share)


def test_storage_options_reach_fsspec_and_are_never_shown(
    s3: str, runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong")
    out = tmp_path / "out.jsonl"
    secret = "secret-value-never-printed"
    result = invoke(
        runner, "predict", f"s3://{BUCKET}/photos/nested/", *LITE, "-o", str(out),
        "--storage-option", f"endpoint_url={s3}", "--storage-option", "key=testing",
        "--storage-option", f"secret={secret}", "--storage-option", "client_kwargs.region_name=us-east-1",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert [r["path"] for r in parse_jsonl(out.read_text())] == [
        f"s3://{BUCKET}/photos/nested/a1.jpg", f"s3://{BUCKET}/photos/nested/b.jpeg",
    ]  # fmt: skip
    manifest = out.with_name("out.jsonl.manifest.json").read_text()
    assert json.loads(manifest)["run"]["storage_options"] == ["client_kwargs", "endpoint_url", "key", "secret"]
    for text in (manifest, result.stdout, result.stderr, out.read_text()):
        assert secret not in text


def test_the_python_api_reads_urls(s3: str, lite0: Any, http_base: str) -> None:
    records = list(lite0.predict([f"s3://{BUCKET}/photos/img2.jpg", f"{http_base}/labrador.jpg"]))
    assert records[0].error is None and records[1].class_id == 208
    assert lite0.predict_file(f"{http_base}/labrador.jpg").class_id == 208
    assert lite0.predict_file(f"s3://{BUCKET}/photos/gone.jpg").error == "object not found"


# -- http(s):// ----------------------------------------------------------------------------------


def test_http_urls_are_read_and_a_404_is_an_error_record(http_base: str, runner: CliRunner) -> None:
    listing = f"{http_base}/labrador.jpg\n{http_base}/no-such.jpg\n"
    result = invoke(
        runner, "predict", "-", f"{http_base}/kitten.jpg", str(SAMPLES / "brittany.jpg"), *LITE, input=listing
    )
    assert result.exit_code == 1
    records = parse_jsonl(result.stdout)
    assert [r["path"] for r in records] == [
        f"{http_base}/labrador.jpg", f"{http_base}/no-such.jpg", f"{http_base}/kitten.jpg", str(SAMPLES / "brittany.jpg"),
    ]  # fmt: skip
    assert records[0]["class_id"] == 208 and records[3]["class_id"] == 215
    assert records[1]["error"] == "HTTP 404 File not found"
    local = parse_jsonl(invoke(runner, "predict", str(SAMPLES / "kitten.jpg"), *LITE).stdout)
    assert without_path(records[2]) == without_path(local[0])


def test_a_stream_of_inputs_in_io() -> None:
    """``-`` reads URLs from any text stream (the library's ``expand_inputs``)."""
    from imgclassify.run.inputs import expand_inputs

    listing = "https://h/a.jpg\nhttps://h/A.jpg\nhttps://h/a.jpg\nhttp://h/b?x=1\n"
    found = expand_inputs(["-"], stdin=io.StringIO(listing))  # no request made: read when classified
    assert found.paths == ["https://h/a.jpg", "https://h/A.jpg", "http://h/b?x=1"] and found.duplicates == 1


# -- outputs in object storage -------------------------------------------------------------------


def read_object(endpoint: str, key: str) -> bytes:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    return bytes(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def test_output_to_s3_with_its_manifest_and_resume(
    s3: str, runner: CliRunner, local_records: list[dict[str, Any]]
) -> None:
    import boto3

    url = f"s3://{BUCKET}/results/run.jsonl"
    result = invoke(runner, "predict", f"s3://{BUCKET}/photos/", *LITE, "-k", "3", "-o", url)
    assert result.exit_code == 0, result.stderr
    records = parse_jsonl(read_object(s3, "results/run.jsonl").decode())
    assert [without_path(r) for r in records] == [without_path(r) for r in local_records]
    manifest = json.loads(read_object(s3, "results/run.jsonl.manifest.json"))
    assert manifest["status"] == "complete" and manifest["run"]["output"] == url
    assert manifest["counts"]["classified"] == 5

    # a run killed after two records and part of a third: --resume downloads, finishes, uploads
    text = read_object(s3, "results/run.jsonl").decode()
    lines = text.splitlines(keepends=True)
    client = boto3.client(
        "s3", endpoint_url=s3, aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    client.put_object(Bucket=BUCKET, Key="results/run.jsonl", Body=("".join(lines[:2]) + lines[2][:20]).encode())
    result = invoke(runner, "predict", f"s3://{BUCKET}/photos/", *LITE, "-k", "3", "-o", url, "--resume")
    assert result.exit_code == 0, result.stderr
    assert "3 classified, 0 failed, 1 non-image file skipped, 2 already in the output" in result.stderr
    assert read_object(s3, "results/run.jsonl").decode() == text  # each input once, as the first run wrote it
    manifest = json.loads(read_object(s3, "results/run.jsonl.manifest.json"))
    assert manifest["resumed"]["already_done"] == 2 and manifest["status"] == "complete"


def test_outputs_that_cannot_be_objects_are_refused(s3: str, runner: CliRunner) -> None:
    for output, message in (
        (f"s3://{BUCKET}/results/", "names a prefix: give an object name"),
        ("http://127.0.0.1:9/out.jsonl", "http(s) URLs are inputs only"),
    ):
        result = invoke(runner, "predict", str(SAMPLES / "kitten.jpg"), *LITE, "-o", output)
        assert result.exit_code == 2 and message in result.stderr, result.stderr


def test_a_parquet_output_to_s3_reads_back_with_pyarrow(
    s3: str, runner: CliRunner, local_records: list[dict[str, Any]]
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    result = invoke(runner, "predict", f"s3://{BUCKET}/photos/", *LITE[:4], "-o", f"s3://{BUCKET}/results/run.parquet")
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(io.BytesIO(read_object(s3, "results/run.parquet")))
    assert table.column("path").to_pylist() == [f"s3://{BUCKET}/photos/{name}" for name in ORDER]
    assert table.column("class_id").to_pylist() == [r["class_id"] for r in local_records]
    assert json.loads(read_object(s3, "results/run.parquet.manifest.json"))["status"] == "complete"
