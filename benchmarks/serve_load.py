"""Load benchmark for `imgclassify serve` (not a test): requests/s and p50/p99 latency.

Starts the server itself on loopback, once with dynamic batching and once without, and drives
it with 1, 4 and 16 concurrent clients posting real photos. Prints a Markdown table.

    python benchmarks/serve_load.py [--model efficientnet_lite0] [--seconds 15] [--concurrency 1 4 16]

``--slow-clients N`` measures slow clients instead: N connections that send their headers and
half of a multipart body, then stall (reconnecting as soon as the server cuts one off, so N
stay stalled throughout), while one normal client posts photos one after another; the table
gives the normal client's answer times. ``--url`` drives a server that is already running
(another server design, e.g. ``gunicorn --threads 8 "imgclassify.server:create_app()"``).

    python benchmarks/serve_load.py --slow-clients 32 --threads 8 --seconds 20

``--overload 2 4`` measures back-pressure: the server's capacity first (16 closed-loop clients),
then an open-loop load of 2x and 4x that many requests per second (each sent at its scheduled
time, whatever the answers before it), for each ``--max-queue`` given (0: no bound, in effect);
the table gives the p50/p99 latency of the answered requests, the share refused with 503 and how
fast those refusals came.

    python benchmarks/serve_load.py --overload 2 4 --max-queue 0 16 64 --seconds 20
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
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

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


def start_server(
    args: argparse.Namespace, batching: bool, threads: int | None = None, extra: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("imgclassify", path=str(Path(sys.executable).parent)) or "imgclassify"
    port = free_port()
    threads = threads or max(args.concurrency) + 2
    cmd = [exe, "serve", "--port", str(port), "--threads", str(threads), "-q", "-m", args.model, *(extra or [])]
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


def drive(base: str, concurrency: int, seconds: float, timeout: float = 120, worst: bool = False) -> Any:
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
                with urllib.request.urlopen(req, timeout=timeout) as r:
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
    if worst:
        return (
            len(latencies) / elapsed,
            p50 * 1000,
            p99 * 1000,
            errors,
            (latencies[-1] if latencies else float("nan")) * 1000,
        )
    return len(latencies) / elapsed, p50 * 1000, p99 * 1000, errors


class StalledUploads:
    """N connections, each stalled half-way through a multipart upload; replaced when cut off."""

    def __init__(self, base: str, count: int) -> None:
        host, port = base.removeprefix("http://").rsplit(":", 1)
        self.address = (host, int(port))
        data, ctype = multipart("kitten.jpg")
        self.head = (
            f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n\r\n"
        ).encode() + data[: len(data) // 2]
        self.count = count
        self.cut_off = 0  # connections the server answered or closed
        self.answers: dict[str, int] = {}  # first line of the server's answer, if any
        self.stop = threading.Event()
        self.opened = threading.Semaphore(0)
        self.threads = [threading.Thread(target=self._hold, daemon=True) for _ in range(count)]

    def __enter__(self) -> StalledUploads:
        for t in self.threads:
            t.start()
        for _ in range(self.count):
            self.opened.acquire(timeout=30)
        time.sleep(0.5)  # let the server pick them up
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)

    def _hold(self) -> None:
        first = True
        while not self.stop.is_set():
            try:
                with socket.create_connection(self.address, timeout=5) as s:
                    s.sendall(self.head)
                    if first:
                        self.opened.release()
                        first = False
                    s.settimeout(0.2)
                    reply = b""
                    while not self.stop.is_set():
                        try:
                            chunk = s.recv(4096)
                        except TimeoutError:
                            continue
                        if not chunk:
                            break
                        reply += chunk
                    if self.stop.is_set():
                        return
                    line = reply.split(b"\r\n", 1)[0].decode(errors="replace") or "(closed)"
                    self.cut_off += 1
                    self.answers[line] = self.answers.get(line, 0) + 1
            except OSError:
                time.sleep(0.05)
            if first:
                self.opened.release()
                first = False


def open_loop(base: str, rate: float, seconds: float, timeout: float = 120) -> dict[str, float]:
    """Requests at ``rate`` per second for ``seconds``, each at its time (enough client threads)."""
    from concurrent.futures import ThreadPoolExecutor

    bodies = [multipart(n) for n in PHOTOS]
    ok: list[float] = []
    refused: list[float] = []
    other = [0]
    lock = threading.Lock()

    def one(i: int) -> None:
        data, ctype = bodies[i % len(bodies)]
        t0 = time.perf_counter()
        try:
            req = urllib.request.Request(base + "/predict", data=data, headers={"Content-Type": ctype})
            with urllib.request.urlopen(req, timeout=timeout) as r:
                r.read()
                status = r.status
        except urllib.error.HTTPError as exc:
            exc.read()
            status = exc.code
        except OSError:
            status = -1
        dt = time.perf_counter() - t0
        with lock:
            if status == 200:
                ok.append(dt)
            elif status == 503:
                refused.append(dt)
            else:
                other[0] += 1

    count = int(rate * seconds)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(512, max(16, int(rate * 4)))) as pool:
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, i)
    elapsed = time.perf_counter() - start
    ok.sort()
    refused.sort()

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")

    total = len(ok) + len(refused) + other[0]
    return {
        "offered": count / seconds, "answered_per_s": len(ok) / elapsed, "p50": pct(ok, 0.5), "p99": pct(ok, 0.99),
        "refused_share": len(refused) / total if total else float("nan"), "refused_p50": pct(refused, 0.5),
        "other": other[0],
    }  # fmt: skip


def overload(args: argparse.Namespace) -> None:
    print(
        f"# serve_load --overload: {args.model}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"--max-batch-size {args.max_batch_size}, {args.seconds:g}s per cell"
    )
    print(
        "| --max-queue | load | offered req/s | answered req/s | p50 ms | p99 ms | 503 share | 503 p50 ms | other errors |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for queue in args.max_queue:
        extra = ["--max-queue", str(queue or 1_000_000)]
        proc, base = start_server(args, True, threads=64, extra=extra)
        try:
            drive(base, 2, 2.0)  # warm up
            capacity, _, _, _ = drive(base, 16, args.seconds)
            label = str(queue) if queue else "none"
            print(f"| {label} | capacity (16 clients) | | {capacity:.1f} | | | | | |", flush=True)
            for factor in args.overload:
                r = open_loop(base, capacity * factor, args.seconds)
                print(
                    f"| {label} | {factor:g}x | {r['offered']:.1f} | {r['answered_per_s']:.1f} | {r['p50']:.0f} | "
                    f"{r['p99']:.0f} | {r['refused_share']:.0%} | {r['refused_p50']:.0f} | {r['other']:.0f} |",
                    flush=True,
                )
                time.sleep(2)  # let the queue drain between cells
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def slow_clients(args: argparse.Namespace, base: str, label: str) -> None:
    drive(base, 1, 1.0)  # warm up
    with StalledUploads(base, args.slow_clients) as stalled:
        rps, p50, p99, errors, worst = drive(base, 1, args.seconds, timeout=args.timeout, worst=True)
    answers = ", ".join(f"{n}x {line}" for line, n in sorted(stalled.answers.items())) or "none"
    print(
        f"| {label} | {args.slow_clients} | {rps * args.seconds:.0f} | {p50:.0f} | {p99:.0f} | {worst:.0f} | {errors} | {answers} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--slow-clients", type=int, default=0, help="measure N stalled uploads instead")
    parser.add_argument("--threads", type=int, default=8, help="serve --threads for --slow-clients")
    parser.add_argument("--read-timeout", type=float, default=None, help="serve --read-timeout for --slow-clients")
    parser.add_argument("--timeout", type=float, default=60.0, help="normal client's timeout with --slow-clients")
    parser.add_argument("--url", help="drive this running server instead of starting one")
    parser.add_argument("--label", default=None, help="the server's name in the --slow-clients table")
    parser.add_argument("--overload", type=float, nargs="*", default=None, help="open-loop loads, x capacity")
    parser.add_argument("--max-queue", type=int, nargs="+", default=[0, 64], help="with --overload (0: none)")
    args = parser.parse_args()
    if args.overload:
        overload(args)
        return
    if args.slow_clients:
        print(
            f"# serve_load --slow-clients: {args.model}, {os.cpu_count()} CPUs, one normal client for {args.seconds:g}s"
        )
        print(
            "| server | stalled uploads | normal requests | p50 ms | p99 ms | max ms | errors | stalled uploads' answers |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        if args.url:
            slow_clients(args, args.url.rstrip("/"), args.label or args.url)
            return
        extra = [] if args.read_timeout is None else ["--read-timeout", str(args.read_timeout)]
        proc, base = start_server(args, True, threads=args.threads, extra=extra)
        try:
            label = args.label or f"imgclassify serve --threads {args.threads}" + (
                f" --read-timeout {args.read_timeout:g}" if args.read_timeout is not None else ""
            )
            slow_clients(args, base, label)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        return
    print(
        f"# serve_load: {args.model}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.seconds:g}s per cell"
    )
    print("| batching | clients | requests/s | p50 ms | p99 ms | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    if args.url:
        drive(args.url.rstrip("/"), 2, 2.0)
        for c in args.concurrency:
            rps, p50, p99, errors = drive(args.url.rstrip("/"), c, args.seconds)
            print(f"| {args.label or args.url} | {c} | {rps:.1f} | {p50:.0f} | {p99:.0f} | {errors} |", flush=True)
        return
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
