"""Scale-out benchmark (not a test): the Ray engine against the local engine, two processes against
one, and Ray's start-up, in ONE run on one corpus, so the ratios compare like with like.

    flock -x /tmp/imgclassify-cpu.lock python benchmarks/scaleout.py [--images 400] [--model efficientnet_lite0]

Every row is ``imgclassify predict`` end to end as a subprocess, records to stdout (timed as they
arrive). "whole run" counts from the process start to its exit; "steady" is records per second
between the first and the last record. The Ray rows run on a one-node Ray cluster started
beforehand (``ray.cluster_utils.Cluster``, this machine's cores), so they exclude Ray's start-up,
which is measured on its own (``ray.init`` of a local Ray, and the same run with no
``--ray-address``, which starts and stops one). Two shards: ``--shard 1/2`` and ``2/2`` when
``predict`` has that option, else two processes on the two halves of the inputs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = sorted((ROOT / "tests" / "data" / "imagenet-labelled").glob("*.JPEG"))
EXE = shutil.which("imgclassify", path=str(Path(sys.executable).parent)) or "imgclassify"
MB = 1024 * 1024


def build_corpus(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:05d}.jpg"
        shutil.copyfile(PHOTOS[i % len(PHOTOS)], path)
        paths.append(str(path))
    return paths


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [EXE, "predict", *args, "-f", "jsonl", "--no-progress", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def timed(procs: list[subprocess.Popen[str]], started: float) -> tuple[float, float, int]:
    """Whole-run seconds, steady images/s (first to last record over all processes), records."""
    import selectors

    selector = selectors.DefaultSelector()
    for proc in procs:
        assert proc.stdout is not None
        selector.register(proc.stdout, selectors.EVENT_READ)
    first = last = 0.0
    records = 0
    open_streams = len(procs)
    while open_streams:
        for key, _ in selector.select():
            line = key.fileobj.readline()  # type: ignore[union-attr]
            if not line:
                selector.unregister(key.fileobj)
                open_streams -= 1
                continue
            now = time.perf_counter()
            if not records:
                first = now
            records += 1
            last = now
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"imgclassify failed ({proc.returncode}): {err[-2000:]}")
    whole = time.perf_counter() - started
    steady = (records - 1) / (last - first) if last > first else 0.0
    return whole, steady, records


def run(args: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    started = time.perf_counter()
    return timed([start(args, env)], started)


def ray_startup(env: dict[str, str]) -> tuple[float, float]:
    """Seconds for ``ray.init`` of a local Ray (import included) and for ``ray.shutdown``, fresh process."""
    code = (
        "import time; t0 = time.perf_counter(); import ray; "
        "ray.init(address='local', include_dashboard=False, log_to_driver=False, logging_level='ERROR'); "
        "t1 = time.perf_counter(); ray.shutdown(); print(t1 - t0, time.perf_counter() - t1)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    init, shutdown = (float(x) for x in out.split()[-2:])
    return init, shutdown


def has_shard_option(env: dict[str, str]) -> bool:
    help_text = subprocess.run([EXE, "predict", "--help"], capture_output=True, text=True, env=env).stdout
    return "--shard" in help_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    from ray.cluster_utils import Cluster

    from imgclassify.run.engines.ray import RAY_CLUSTER_SWITCH
    from imgclassify.system.capabilities import cpu_description

    # loopback only: the local Rays as the engine's own (ray_startup too), and the drivers reach the
    # cluster's 127.0.0.1 address there (with Ray's cluster switch on, they would resolve it to the
    # machine's network address)
    env = {**os.environ, "IMGCLASSIFY_OFFLINE": "1", RAY_CLUSTER_SWITCH: "0"}
    env.pop("RAY_ADDRESS", None)
    cores = os.cpu_count() or 1
    common = ["-m", args.model, "-b", str(args.batch_size), "--device", "cpu"]
    rows: list[tuple[str, float, float, int]] = []

    def report(name: str, result: tuple[float, float, int]) -> None:
        rows.append((name, *result))
        print(f"{name}: {result[2]} records, whole run {result[0]:.1f}s, steady {result[1]:.1f} img/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        paths = build_corpus(Path(tmp) / "corpus", args.images)
        print(
            f"# scaleout: {args.model}, {args.images} images, batch {args.batch_size}; CPU: {cpu_description()}",
            flush=True,
        )
        init, shutdown = ray_startup(env)
        print(
            f"ray start-up (fresh process, import + ray.init of a local Ray): {init:.1f}s; ray.shutdown: {shutdown:.1f}s"
        )

        local = run([*paths, *common], env)
        report("local engine, 1 process", local)

        half = len(paths) // 2
        if has_shard_option(env):
            how, parts = "--shard K/2", [[*paths, "--shard", f"{k}/2"] for k in (1, 2)]
        else:
            how, parts = "halves", [paths[:half], paths[half:]]
        started = time.perf_counter()
        report(f"local engine, 2 processes ({how})", timed([start([*p, *common], env) for p in parts], started))

        report("ray engine, own local Ray (start-up included)", run([*paths, *common, "--engine", "ray"], env))

        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": cores,
                "object_store_memory": 300 * MB,
                "include_dashboard": False,
                "node_ip_address": "127.0.0.1",
            },
        )
        try:
            address = ["--engine", "ray", "--ray-address", cluster.address]
            for actors in sorted({max(1, cores // 2), max(1, cores - 1)}):  # a CPU stays for decoding
                result = run([*paths, *common, *address, "--ray-actors", str(actors)], env)
                report(f"ray engine, running cluster, {actors} actor(s)", result)
        finally:
            cluster.shutdown()  # type: ignore[no-untyped-call]

    base_whole, base_steady = local[0], local[1]
    print("| run | records | whole run s | steady img/s | whole-run speed vs local | steady vs local |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, whole, steady, records in rows:
        print(
            f"| {name} | {records} | {whole:.1f} | {steady:.1f} | {base_whole / whole:.2f} | "
            f"{steady / base_steady if base_steady else 0:.2f} |"
        )


if __name__ == "__main__":
    main()
