"""``imgclassify merge`` and ``imgclassify report`` on files in object storage: shards written to a
bucket by real ``predict --shard K/N -o s3://...`` runs, merged from the bucket to the bucket, read
back with boto3 and pyarrow, a report from a bucket file. The S3 API is moto's server on 127.0.0.1
(a real server, as in test_object_storage.py), nothing is mocked in the client."""

from __future__ import annotations

import io
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_object_storage import invoke
from test_report import page_data
from typer.testing import CliRunner

from conftest import LABELLED, parse_jsonl

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

BUCKET = "runs-bucket"  # a bucket of its own: moto's servers in one process share their state
#: batch size 1: an image's arithmetic never depends on the others in its batch, so shards merge byte for byte
LITE = ["-m", "efficientnet_lite0", "-d", "cpu", "--offline", "-b", "1", "-k", "3"]
PHOTOS = {
    "photos/img2.jpg": 0, "photos/img10.jpg": 1, "photos/IMG3.JPEG": 2, "photos/nested/a1.jpg": 3,
    "photos/nested/b.jpeg": 4, "photos/nested/c.jpg": 5, "photos/z.jpg": 6,
}  # fmt: skip
#: the shard outputs, in two formats: a glob on "shard-" lists both (and leaves their manifests out)
SHARD_KEYS = {1: "run/shard-1.jsonl", 2: "run/shard-2.parquet"}


def client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
        region_name="us-east-1",
    )  # fmt: skip


def get(endpoint: str, key: str) -> bytes:
    return bytes(client(endpoint).get_object(Bucket=BUCKET, Key=key)["Body"].read())


def exists(endpoint: str, key: str) -> bool:
    return "Contents" in client(endpoint).list_objects_v2(Bucket=BUCKET, Prefix=key)


def aws_environment(monkeypatch: pytest.MonkeyPatch, endpoint: str, folder: Path) -> None:
    """The AWS environment pointing at the local server (dummy credentials, no profile files)."""
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", endpoint), ("AWS_CONFIG_FILE", str(folder / "no-aws-config")),
        ("AWS_SHARED_CREDENTIALS_FILE", str(folder / "no-aws-credentials")), ("IMGCLASSIFY_OFFLINE", "1"),
    ):  # fmt: skip
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a port the system picks), with photos uploaded by boto3."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    s3 = client(url)
    s3.create_bucket(Bucket=BUCKET)
    photos = sorted(LABELLED.glob("*.JPEG"))
    for key, index in PHOTOS.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=photos[index].read_bytes())
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def s3(endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    aws_environment(monkeypatch, endpoint, tmp_path)
    scratch = tmp_path / "tmp"  # the temporary folders of merge and report: checked empty after
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return endpoint


@pytest.fixture(scope="module")
def runs(endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``photos/`` classified once whole into a local file (single.jsonl) and as 2 shards written to the
    bucket (``--shard 1/2 -o s3://.../shard-1.jsonl``, ``--shard 2/2 -o s3://.../shard-2.parquet``)."""
    pytest.importorskip("pyarrow")
    folder = tmp_path_factory.mktemp("runs")
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as monkeypatch:
        aws_environment(monkeypatch, endpoint, folder)
        monkeypatch.setenv("TORCH_HOME", str(folder / "torch"))
        photos = f"s3://{BUCKET}/photos/"
        result = invoke(runner, "predict", photos, *LITE, "-o", str(folder / "single.jsonl"))
        assert result.exit_code == 0, result.stderr
        for index, key in SHARD_KEYS.items():
            result = invoke(runner, "predict", photos, *LITE, "--shard", f"{index}/2", "-o", f"s3://{BUCKET}/{key}")
            assert result.exit_code == 0, result.stderr
    return folder


def parquet_records(data: bytes) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return list(pq.read_table(io.BytesIO(data)).to_pylist())


def without_nulls(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if value is not None}


@pytest.mark.slow
def test_shards_in_a_bucket_merge_there_to_the_single_run(s3: str, runs: Path, runner: CliRunner) -> None:
    single_text = (runs / "single.jsonl").read_text()
    single = parse_jsonl(single_text)
    assert [r["path"] for r in single] == [
        f"s3://{BUCKET}/photos/{name}"
        for name in ("img2.jpg", "IMG3.JPEG", "img10.jpg", "nested/a1.jpg", "nested/b.jpeg", "nested/c.jpg", "z.jpg")
    ]
    # each shard has work, and the shards split the paths between them
    one = parse_jsonl(get(s3, SHARD_KEYS[1]).decode())
    two = parquet_records(get(s3, SHARD_KEYS[2]))
    assert one and two and sorted(str(r["path"]) for r in [*one, *two]) == sorted(str(r["path"]) for r in single)

    # a glob lists both shards (natural order, manifests left out) of two formats; the output is JSON Lines
    result = invoke(runner, "merge", f"s3://{BUCKET}/run/all.jsonl", f"s3://{BUCKET}/run/shard-*")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (
        f"imgclassify: merged 2 shards into s3://{BUCKET}/run/all.jsonl: 7 records (7 classified, 0 failed), "
        f"manifest s3://{BUCKET}/run/all.jsonl.manifest.json\n"
    )
    assert get(s3, "run/all.jsonl").decode() == single_text  # the same records, in the same order, byte for byte
    manifest = json.loads(get(s3, "run/all.jsonl.manifest.json"))
    assert manifest["status"] == "complete" and manifest["run"]["output"] == f"s3://{BUCKET}/run/all.jsonl"
    assert [(s["output"], s["manifest"]) for s in manifest["engine"]["shards"]] == [
        (f"s3://{BUCKET}/{key}", f"s3://{BUCKET}/{key}.manifest.json") for key in SHARD_KEYS.values()
    ]
    assert manifest["counts"]["inputs"] == 7 and manifest["run"]["merged_from"] == 2

    # the shards named one by one, merged to Parquet, read back with pyarrow
    shards = [f"s3://{BUCKET}/{key}" for key in reversed(SHARD_KEYS.values())]
    result = invoke(runner, "merge", f"s3://{BUCKET}/run/all.parquet", *shards)
    assert result.exit_code == 0, result.stderr
    merged = parquet_records(get(s3, "run/all.parquet"))
    assert [without_nulls(r) for r in merged] == [without_nulls(r) for r in single]
    assert json.loads(get(s3, "run/all.parquet.manifest.json"))["run"]["format"] == "parquet"
    assert list((Path(tempfile.gettempdir())).iterdir()) == []  # downloads and the staged output removed


@pytest.mark.slow
def test_a_merge_to_a_local_file_and_storage_options_never_shown(
    s3: str, runs: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from conftest import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong")
    secret = "secret-value-never-printed"
    options = [
        "--storage-option", f"endpoint_url={s3}", "--storage-option", "key=testing",
        "--storage-option", f"secret={secret}",
    ]  # fmt: skip
    out = tmp_path / "all.jsonl"
    shards = [f"s3://{BUCKET}/{key}" for key in SHARD_KEYS.values()]
    result = invoke(runner, "merge", str(out), *shards)  # the environment's endpoint: unreachable, not "not found"
    assert result.exit_code == 2 and f"cannot read {shards[0]}: Could not connect" in result.stderr, result.stderr
    assert not out.exists()
    result = invoke(runner, "merge", str(out), *shards, *options)
    assert result.exit_code == 0, result.stderr
    assert out.read_text() == (runs / "single.jsonl").read_text()
    manifest = (tmp_path / "all.jsonl.manifest.json").read_text()
    assert json.loads(manifest)["run"]["storage_options"] == ["endpoint_url", "key", "secret"]
    assert json.loads(manifest)["engine"]["shards"][0]["output"] == shards[0]
    for text in (manifest, result.stdout, result.stderr, out.read_text()):
        assert secret not in text

    # the report: from the bucket (its manifest beside it), to the bucket, thumbnails read from the bucket
    result = invoke(runner, "report", shards[1], "-o", f"s3://{BUCKET}/run/report.html", *options)
    assert result.exit_code == 0, result.stderr
    assert secret not in result.stderr and secret not in result.stdout
    page = tmp_path / "report.html"
    page.write_bytes(get(s3, "run/report.html"))
    data, thumbs = page_data(page)
    assert secret not in page.read_text()
    assert data["results"] == shards[1] and data["manifest"]["path"] == shards[1] + ".manifest.json"
    assert len(thumbs) == data["counts"]["classified"] == len(parquet_records(get(s3, SHARD_KEYS[2])))


@pytest.mark.slow
def test_report_of_a_bucket_file(s3: str, runs: Path, runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    url = f"s3://{BUCKET}/{SHARD_KEYS[1]}"
    result = invoke(runner, "report", url, "-o", str(out))
    assert result.exit_code == 0, result.stderr
    records = parse_jsonl(get(s3, SHARD_KEYS[1]).decode())
    n = len(records)
    assert f"wrote {out}: {n} records ({n} classified, 0 failed)" in result.stderr
    assert f"{n} thumbnails, manifest {url}.manifest.json" in result.stderr  # the photos read from the bucket
    data, thumbs = page_data(out)
    assert data["results"] == url and data["title"] == "imgclassify report: shard-1.jsonl"
    assert [r["path"] for r in data["records"]] == [r["path"] for r in records] and len(thumbs) == n
    assert data["manifest"]["data"]["run"]["shard"] == {"index": 1, "count": 2}
    assert list((Path(tempfile.gettempdir())).iterdir()) == []


def test_a_missing_shard_or_results_object_is_an_error_naming_it(s3: str, runner: CliRunner, tmp_path: Path) -> None:
    s3_client = client(s3)
    s3_client.put_object(Bucket=BUCKET, Key="lone/out.1.jsonl", Body=b"")  # an object without its manifest
    missing = f"s3://{BUCKET}/lone/out.2.jsonl"
    for shards, message in (
        ([missing, f"s3://{BUCKET}/lone/out.1.jsonl"], f"shard output {missing} not found (no such object); pass"),
        ([f"s3://{BUCKET}/lone/out.1.jsonl"], f"s3://{BUCKET}/lone/out.1.jsonl has no manifest (out.1.jsonl.manifest"),
        ([f"s3://{BUCKET}/lone/nothing-*.jsonl"], f"no shard output matches s3://{BUCKET}/lone/nothing-*.jsonl"),
    ):
        result = invoke(runner, "merge", f"s3://{BUCKET}/lone/all.jsonl", *shards)
        assert result.exit_code == 2 and message in result.stderr, result.stderr
        assert "`imgclassify predict --shard K/N -o" in result.stderr or "manifest" in message
    assert not exists(s3, "lone/all.jsonl")  # nothing put in place

    result = invoke(runner, "report", missing, "-o", str(tmp_path / "r.html"))
    assert result.exit_code == 2, result.stderr
    assert f"results file {missing} not found (no such object)" in result.stderr
    assert not (tmp_path / "r.html").exists()
    for command in (["merge", "http://127.0.0.1:9/all.jsonl", missing], ["report", missing, "-o", f"s3://{BUCKET}/"]):
        result = invoke(runner, *command)
        assert result.exit_code == 2 and (
            "http(s) URLs are inputs only" in result.stderr or "names a prefix" in result.stderr
        )
    assert list((Path(tempfile.gettempdir())).iterdir()) == []
