"""--engine ray on object storage and http(s) URLs, all real servers on loopback (no mocks): moto's
S3 server, ``http.server``, a two-node Ray cluster. The decode tasks read the objects with the
``--storage-option`` values (the cluster's own environment points nowhere), and the records are
the local engine's: same classes, the URL as the path, error records for what cannot be read."""

from __future__ import annotations

import functools
import http.server
import json
import logging
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_ray_engine import LOOPBACK, MB, driver_env
from typer.testing import CliRunner

from conftest import LABELLED, SAMPLES, free_port, parse_jsonl
from imgclassify.cli import app

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

BUCKET = "ray-photos"
SECRET = "ray-secret-never-shown"
#: 12 labelled photos under photos/ (two in a nested prefix): natural order puts img2 before img10
PHOTOS = sorted(LABELLED.glob("*.JPEG"))[:12]
KEYS = [f"photos/img{i}.jpg" for i in range(1, 11)] + ["photos/nested/img11.jpg", "photos/nested/img12.jpg"]
TRUNCATED = f"s3://{BUCKET}/bad/truncated.jpg"
MISSING = f"s3://{BUCKET}/photos/no-such-photo.jpg"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a port of its choosing), the objects uploaded by boto3."""
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
        region_name="us-east-1",
    )  # fmt: skip
    client.create_bucket(Bucket=BUCKET)
    for key, photo in zip(KEYS, PHOTOS, strict=True):
        client.put_object(Bucket=BUCKET, Key=key, Body=photo.read_bytes())
    jpeg = (SAMPLES / "kitten.jpg").read_bytes()
    client.put_object(Bucket=BUCKET, Key="bad/truncated.jpg", Body=jpeg[: len(jpeg) // 3])
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    """``http.server`` on 127.0.0.1 serving samples/."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), functools.partial(Quiet, directory=str(SAMPLES)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def nowhere_env(tmp: Path) -> dict[str, str]:
    """An AWS environment that reaches no store: an endpoint where nothing listens (on loopback), no
    profile files, no instance metadata lookups. What works, works through ``--storage-option``."""
    return {
        "AWS_ENDPOINT_URL": f"http://{LOOPBACK}:{free_port()}",
        "AWS_ACCESS_KEY_ID": "wrong",
        "AWS_SECRET_ACCESS_KEY": "wrong",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Two Ray nodes on loopback, 2 CPUs each, as in test_ray_engine; their processes (and the workers
    they start) inherit :func:`nowhere_env`."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as mp:
        for name, value in nowhere_env(tmp_path_factory.mktemp("cluster-aws")).items():
            mp.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            mp.delenv(name, raising=False)
        nodes = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 2, "object_store_memory": 200 * MB, "include_dashboard": False,
                "node_ip_address": LOOPBACK,
            },
        )  # fmt: skip
        nodes.add_node(num_cpus=2, object_store_memory=200 * MB, node_ip_address=LOOPBACK)
        nodes.wait_for_nodes()
    yield nodes
    nodes.shutdown()  # type: ignore[no-untyped-call]


def storage_options(endpoint: str) -> list[str]:
    options = [f"endpoint_url={endpoint}", "key=testing", f"secret={SECRET}", "client_kwargs.region_name=us-east-1"]
    return [arg for option in options for arg in ("--storage-option", option)]


def inputs(http_base: str) -> list[str]:
    """A prefix, a truncated object, a missing key, an http page and an http 404, a local file."""
    return [
        f"s3://{BUCKET}/photos/", TRUNCATED, MISSING, f"{http_base}/labrador.jpg", f"{http_base}/no-such.jpg",
        str(SAMPLES / "brittany.jpg"),
    ]  # fmt: skip


#: the paths the inputs list to, in order
EXPECTED = [f"s3://{BUCKET}/{key}" for key in KEYS] + [TRUNCATED, MISSING]
ERRORS = {TRUNCATED: "truncated image file", MISSING: "object not found"}


@pytest.fixture(scope="module")
def local_records(s3_endpoint: str, http_base: str) -> list[dict[str, Any]]:
    """The local engine on the same inputs: what the Ray runs must match."""
    result = CliRunner().invoke(
        app,
        ["predict", *inputs(http_base), "-m", "efficientnet_lite0", "-d", "cpu", "-f", "jsonl", "-k", "3",
         *storage_options(s3_endpoint)],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 1, result.stderr  # the failures below
    records = parse_jsonl(result.stdout)
    paths = [r["path"] for r in records]
    assert paths == [*EXPECTED, f"{http_base}/labrador.jpg", f"{http_base}/no-such.jpg", str(SAMPLES / "brittany.jpg")]
    errors = {r["path"]: r["error"] for r in records if r["error"]}
    assert errors == {**ERRORS, f"{http_base}/no-such.jpg": "HTTP 404 File not found"}
    return records


def assert_same_records(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [r["path"] for r in got] == [r["path"] for r in expected]  # the URL kept, input order
    for record, local in zip(got, expected, strict=True):
        assert record["error"] == local["error"], record["path"]
        ids = [c["class_id"] for c in record["top_k"] or []]
        assert ids == [c["class_id"] for c in local["top_k"] or []], record["path"]
        for c, lc in zip(record["top_k"] or [], local["top_k"] or [], strict=True):
            assert c["probability"] == pytest.approx(lc["probability"], abs=1e-5)


@pytest.mark.slow
def test_ray_reads_s3_and_http_with_the_local_records(
    cluster: Any, s3_endpoint: str, http_base: str, local_records: list[dict[str, Any]], tmp_path: Path
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "out.parquet"
    args = [
        *inputs(http_base), "-k", "3", "-b", "2", "--ray-address", cluster.address, "--ray-actors", "2",
        "-o", str(out), *storage_options(s3_endpoint),
    ]  # fmt: skip
    exe = shutil.which("imgclassify", path=str(Path(sys.executable).parent)) or "imgclassify"
    proc = subprocess.run(
        [exe, "predict", *args, "-m", "efficientnet_lite0", "--engine", "ray", "--no-progress"],
        capture_output=True, text=True, timeout=300, env={**driver_env(tmp_path), **nowhere_env(tmp_path)},
    )  # fmt: skip
    stderr = proc.stderr
    assert proc.returncode == 1, stderr  # the failed inputs; the others classified
    assert proc.stdout == ""
    assert "14 classified, 3 failed" in stderr, stderr

    table = pq.read_table(out)
    got = [
        {"path": row["path"], "error": row["error"], "top_k": row["top_k"], "class_id": row["class_id"]}
        for row in table.to_pylist()
    ]
    assert_same_records(got, local_records)
    assert [r["class_id"] for r in got] == [r["class_id"] for r in local_records]

    manifest_text = (tmp_path / "out.parquet.manifest.json").read_text()
    manifest = json.loads(manifest_text)
    assert manifest["status"] == "complete" and manifest["counts"]["classified"] == 14
    assert manifest["run"]["storage_options"] == ["client_kwargs", "endpoint_url", "key", "secret"]
    nodes = manifest["engine"]["nodes"]
    assert {n["node_id"] for n in nodes} == {n.node_id for n in cluster.list_all_nodes()}  # both nodes ran the model
    assert sum(n["images"] for n in nodes) == 17  # every record, failed ones too, once
    for text in (manifest_text, stderr):
        assert SECRET not in text
    assert SECRET.encode() not in out.read_bytes()


#: A driver that gives one RayEngine the inputs in consecutive chunks, as the runner may (argv[1]: a
#: JSON object of address, paths, chunk sizes, storage options); prints each chunk's records, and
#: Ray's job id and the number of ray.init calls after start() (0: one connection for all chunks).
CHUNKS_DRIVER = """
import json, sys
import ray
from imgclassify.models.plan import plan_model
from imgclassify.options import ModelOptions
from imgclassify.run.engines.ray import RayEngine
from imgclassify.run.settings import RunSettings
from imgclassify.system.storage import Storage, parse_storage_options

args = json.loads(sys.argv[1])
engine = RayEngine(plan_model(ModelOptions(model="efficientnet_lite0", device="cpu")), address=args["address"], actors=2)
engine.start()
inits = []
init = ray.init
ray.init = lambda *a, **k: inits.append(1) or init(*a, **k)
settings = RunSettings.resolve(
    batch_size=2, top_k=3, threshold=None, workers=None, device=engine.device,
    num_classes=len(engine.label_set.labels), storage=Storage(parse_storage_options(args["options"])),
)
paths, start = args["paths"], 0
for size in args["chunks"]:
    chunk = paths[start : start + size]
    start += size
    records = [r.to_dict(top_k=True) for batch in engine.batches(chunk, settings) for r in batch]
    print(json.dumps({"job": ray.get_runtime_context().get_job_id(), "records": records}), flush=True)
print(json.dumps({"inits": len(inits), "connected": ray.is_initialized(), "nodes": engine.describe()["nodes"]}))
engine.close()
"""


@pytest.mark.slow
def test_consecutive_chunks_on_one_connection_give_the_local_records(
    cluster: Any, s3_endpoint: str, local_records: list[dict[str, Any]], tmp_path: Path
) -> None:
    paths = [r["path"] for r in local_records]
    chunks = [5, 1, 7, len(paths) - 13]  # the last: the missing key, the http inputs, the local file
    options = [option for option in storage_options(s3_endpoint) if option != "--storage-option"]
    args = {"address": cluster.address, "paths": paths, "chunks": chunks, "options": options}
    proc = subprocess.run(
        [sys.executable, "-c", CHUNKS_DRIVER, json.dumps(args)], capture_output=True, text=True, timeout=300,
        env={**driver_env(tmp_path), **nowhere_env(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    *runs, end = lines
    assert [len(run["records"]) for run in runs] == chunks  # each input once, in its own chunk
    assert len({run["job"] for run in runs}) == 1  # one driver connection throughout
    assert end == {"inits": 0, "connected": True, "nodes": end["nodes"]}
    assert sum(n["images"] for n in end["nodes"]) == len(paths)
    assert_same_records([r for run in runs for r in run["records"]], local_records)
    assert SECRET not in proc.stdout + proc.stderr


def test_the_manifests_command_line_keeps_storage_option_keys_not_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from imgclassify.results.manifest import command_line

    argv = ["/venv/bin/imgclassify", "predict", "s3://b/p/", "--storage-option", f"secret={SECRET}=x"]
    monkeypatch.setattr(sys, "argv", [*argv, f"--storage-option=key={SECRET}", "-o", "a=b.jsonl"])
    assert command_line() == [
        "imgclassify", "predict", "s3://b/p/", "--storage-option", "secret=***", "--storage-option=key=***",
        "-o", "a=b.jsonl",
    ]  # fmt: skip


def test_a_decode_task_reads_urls_and_keeps_each_rows_error(http_base: str, tmp_path: Path) -> None:
    """:func:`decode_batch` alone (no Ray): URLs and local paths in one batch, rows in place."""
    import numpy as np

    from imgclassify.decode.decoder import Decoder
    from imgclassify.decode.preprocess import Interpolation, PreprocessConfig
    from imgclassify.run.engines.ray import decode_batch
    from imgclassify.system.storage import Storage

    (tmp_path / "empty.jpg").write_bytes(b"")
    paths = [
        f"{http_base}/kitten.jpg", f"{http_base}/no-such.jpg", str(SAMPLES / "labrador.jpg"),
        str(tmp_path / "empty.jpg"), f"{http_base}/dog.jpg",
    ]  # fmt: skip
    decoder = Decoder(PreprocessConfig(64, 56, Interpolation.BILINEAR, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
    batch = {"index": np.arange(7, 12), "path": np.array(paths, dtype=object)}
    out = decode_batch(batch, decoder, Storage(), fetchers=4)
    assert out["index"].tolist() == [7, 8, 9, 10, 11] and list(out["path"]) == paths
    assert list(out["error"]) == ["", "HTTP 404 File not found", "", "empty file", ""]
    local = decoder(SAMPLES / "kitten.jpg").numpy()
    assert np.array_equal(out["image"][0], local)  # the bytes decoded as the file is
    assert not out["image"][1].any() and out["image"][4].any()
