"""Object-storage benchmark (not a test): the same photos from a local S3 server and from local disk.

    python benchmarks/storage_throughput.py [--images 300] [--model efficientnet_lite0]
                                            [--fetch-threads 1 4 16]

Starts moto's S3 server on 127.0.0.1 (the server the tests use; nothing leaves this machine),
uploads ``--images`` photos (ImageNet-sized, built from the sample photos as
benchmarks/throughput.py does), then, in one run: reading alone (objects/s and MB/s through
``Storage.read`` with N threads), and whole ``imgclassify predict`` processes over the bucket
prefix and over the same files on local disk, for each ``IMGCLASSIFY_FETCH_THREADS``. Prints the
CPU and a Markdown table with the ratio to local disk. moto is a Python server on the same cores:
its own CPU time is part of what is measured, so a real object store (served elsewhere) costs
this machine less; the ratio is a lower bound for a store with a similar latency.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from listing import cpu_name
from throughput import build_corpus

BUCKET = "bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def predict(source: str, out: Path, model: str, env: dict[str, str]) -> float:
    """Seconds for one whole predict process (its start-up counted)."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "imgclassify", "predict", source, "-m", model, "-d", "cpu", "-o", str(out)],
        capture_output=True, text=True, env=env, cwd=out.parent,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"predict {source} failed:\n{result.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--fetch-threads", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()

    import boto3
    from moto import server as moto_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server: one log line per request
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical cores", flush=True)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    credentials = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    env = {**os.environ, **credentials, "AWS_ENDPOINT_URL": endpoint, "IMGCLASSIFY_OFFLINE": "1"}
    os.environ.update({**credentials, "AWS_ENDPOINT_URL": endpoint})
    rows: list[tuple[str, float, float]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            paths = build_corpus(tmp / "photos", args.images)
            size = sum(p.stat().st_size for p in paths)
            client = boto3.client("s3", endpoint_url=endpoint)
            client.create_bucket(Bucket=BUCKET)
            for path in paths:
                client.put_object(Bucket=BUCKET, Key=f"photos/{path.name}", Body=path.read_bytes())
            print(f"{len(paths)} photos, {size / len(paths) / 1024:.0f} KB each on average, uploaded", flush=True)

            from imgclassify.system.storage import Storage

            storage = Storage()
            urls = [f"s3://{BUCKET}/photos/{p.name}" for p in paths]
            for threads in args.fetch_threads:
                start = time.perf_counter()
                with ThreadPoolExecutor(threads) as pool:
                    got = sum(len(data) for data in pool.map(storage.read, urls))
                elapsed = time.perf_counter() - start
                print(
                    f"reading alone, {threads} threads: {len(urls) / elapsed:.0f} objects/s, "
                    f"{got / elapsed / 1e6:.1f} MB/s",
                    flush=True,
                )

            local = predict(str(tmp / "photos"), tmp / "local.jsonl", args.model, env)
            rows.append(("local disk", local, len(paths) / local))
            print(f"local disk: {local:.1f} s", flush=True)
            for threads in args.fetch_threads:
                run_env = {**env, "IMGCLASSIFY_FETCH_THREADS": str(threads)}
                remote = predict(f"s3://{BUCKET}/photos/", tmp / f"s3-{threads}.jsonl", args.model, run_env)
                rows.append((f"s3 (moto), {threads} fetch threads", remote, len(paths) / remote))
                print(f"s3, {threads} fetch threads: {remote:.1f} s", flush=True)
                same = [
                    line.split('"class_id"')[1][:8] for line in (tmp / f"s3-{threads}.jsonl").read_text().splitlines()
                ]
                base = [line.split('"class_id"')[1][:8] for line in (tmp / "local.jsonl").read_text().splitlines()]
                assert same == base, "the bucket's records differ from the local ones"
    finally:
        server.stop()
    print()
    print(f"| source ({args.images} photos, {args.model}) | whole process (s) | images/s | x local disk |")
    print("|---|---:|---:|---:|")
    for name, elapsed, rate in rows:
        print(f"| {name} | {elapsed:.1f} | {rate:.1f} | {rate / rows[0][2]:.2f} |")


if __name__ == "__main__":
    main()
