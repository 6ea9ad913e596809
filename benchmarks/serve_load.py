"""Load benchmark for `imgclassify serve` (not a test): requests/s and p50/p99 latency.

Starts the server itself on loopback, once with dynamic batching and once without, and drives
it with 1, 4 and 16 concurrent clients posting real photos. Prints a Markdown table.

    python benchmarks/serve_load.py [--model efficientnet_lite0] [--seconds 15] [--concurrency 1 4 16]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
PHOTOS = ["kitten.jpg", "labrador.jpg", "brittany.jpg", "dog.jpg", "bus.jpg", "three_dogs.jpg"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def multipart(name: str) -> tuple[bytes, str]:
    boundary = "benchboundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'.encode()
    return head + (
        SAMPLES / name
    ).read_bytes() + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def start_server(args: argparse.Namespace, batching: bool) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("imgclassify", path=str(Path(sys.executable).parent)) or "imgclassify"
    port = free_port()
    cmd = [exe, "serve", "--port", str(port), "--threads", str(max(args.concurrency) + 2), "-q", "-m", args.model]
    cmd += (
        ["--max-batch-size", str(args.max_batch_size), "--max-batch-delay-ms", str(args.delay_ms)]
        if batching
        else ["--no-batching"]
    )
    env = {**os.environ, "IMGCLASSIFY_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc, base
        except OSError:
            time.sleep(0.25)
    proc.kill()
    raise SystemExit("server did not become ready")


def drive(base: str, concurrency: int, seconds: float) -> tuple[float, float, float, int]:
    bodies = [multipart(n) for n in PHOTOS]
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        nonlocal errors
        j = i
        while time.monotonic() < stop:
            data, ctype = bodies[j % len(bodies)]
            j += 1
            t0 = time.perf_counter()
            try:
                req = urllib.request.Request(base + "/predict", data=data, headers={"Content-Type": ctype})
                with urllib.request.urlopen(req, timeout=120) as r:
                    r.read()
                    ok = r.status == 200
            except OSError:
                ok = False
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt) if ok else None
                errors += not ok

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    latencies.sort()
    p50 = statistics.median(latencies) if latencies else float("nan")
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan")
    return len(latencies) / elapsed, p50 * 1000, p99 * 1000, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    args = parser.parse_args()
    print(
        f"# serve_load: {args.model}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.seconds:g}s per cell"
    )
    print("| batching | clients | requests/s | p50 ms | p99 ms | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for batching in (False, True):
        proc, base = start_server(args, batching)
        try:
            drive(base, 2, 2.0)  # warm the server and the client path
            for c in args.concurrency:
                rps, p50, p99, errors = drive(base, c, args.seconds)
                label = f"on (max {args.max_batch_size}, {args.delay_ms:g} ms)" if batching else "off"
                print(f"| {label} | {c} | {rps:.1f} | {p50:.0f} | {p99:.0f} | {errors} |", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
