"""Listing benchmark (not a test): time to the first record and peak memory at any input count.

    python benchmarks/listing.py [--inputs 5000 1000000] [--per-folder 1000] [--run-seconds 30]
                                 [--compare-ref GITREF] [--model efficientnet_lite0]

Builds a tree of N inputs (symbolic links to one sample photo, ``--per-folder`` per folder, as
issue 22 measured), then for each N: the listing alone, in this process (its rate), and a whole
``imgclassify predict TREE -o out.jsonl`` process: seconds until its first record is written, then
its peak resident memory (``VmHWM``) after ``--run-seconds`` of classifying, when it is stopped
with SIGINT. ``--compare-ref`` runs the same process from another commit of this repository (a git
worktree, on ``PYTHONPATH``) in the same run: the listing before it streamed, say.
Prints the CPU and a Markdown table. Run it alone: another busy process on 2 cores skews it.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "samples" / "kitten_small.jpg"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def build_tree(root: Path, count: int, per_folder: int) -> None:
    made = 0
    folder_index = 0
    while made < count:
        folder = root / f"f{folder_index}"
        folder.mkdir(parents=True)
        for i in range(min(per_folder, count - made)):
            os.symlink(PHOTO, folder / f"img{i}.jpg")
        made += min(per_folder, count - made)
        folder_index += 1


def listing_alone(root: Path) -> tuple[float, float, int]:
    """(seconds to the first path, seconds to the last, paths) for the streaming listing, here."""
    sys.path.insert(0, str(ROOT))
    from imgclassify.run.inputs import InputListing

    start = time.perf_counter()
    first = None
    count = 0
    for _ in InputListing([str(root)]):
        if first is None:
            first = time.perf_counter() - start
        count += 1
    return first or 0.0, time.perf_counter() - start, count


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def whole_process(
    root: Path, out: Path, model: str, run_seconds: float, pythonpath: str | None
) -> tuple[float, float, int]:
    """(seconds to the first record, peak RSS in MB, records written) for one predict process."""
    env = {**os.environ, "IMGCLASSIFY_OFFLINE": "1"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    command = [sys.executable, "-m", "imgclassify", "predict", str(root), "-m", model, "-d", "cpu", "-o", str(out)]
    start = time.perf_counter()
    proc = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=out.parent,
        preexec_fn=_default_sigint,  # started from a background job, SIGINT would be ignored
    )  # cwd: not this repository, whose imgclassify -m would import first
    first = float("nan")
    deadline = start + 1800
    while time.perf_counter() < deadline and proc.poll() is None:
        if out.exists() and out.stat().st_size > 0:
            first = time.perf_counter() - start
            break
        time.sleep(0.02)
    if proc.poll() is None:
        time.sleep(run_seconds)
        rss = peak_rss_mb(proc.pid)
        proc.send_signal(signal.SIGINT)
    else:
        rss = float("nan")
    _, err = proc.communicate(timeout=600)
    if proc.returncode not in (0, 128 + signal.SIGINT, -signal.SIGINT):
        raise SystemExit(f"predict failed ({proc.returncode}):\n{err[-3000:]}")
    records = out.read_text().count("\n") if out.exists() else 0
    return first, rss, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, nargs="+", default=[5000, 1_000_000])
    parser.add_argument("--per-folder", type=int, default=1000)
    parser.add_argument("--run-seconds", type=float, default=30.0)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--compare-ref", help="also run this git ref of the repository (a worktree)")
    parser.add_argument("--tmp", type=Path, default=None, help="where to build the trees (default: the temp dir)")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical cores; Python {platform.python_version()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp_name:
        tmp = Path(tmp_name)
        versions: list[tuple[str, str | None]] = [("this tree", None)]
        if args.compare_ref:
            worktree = tmp / "ref"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.compare_ref],
                           check=True, capture_output=True)  # fmt: skip
            versions.append((args.compare_ref, str(worktree)))
        try:
            for count in args.inputs:
                root = tmp / f"tree{count}"
                t0 = time.perf_counter()
                build_tree(root, count, args.per_folder)
                print(f"{count:,} inputs: tree built in {time.perf_counter() - t0:.1f} s", flush=True)
                first_path, listed_in, listed = listing_alone(root)
                print(
                    f"  listing alone: first path {first_path * 1000:.1f} ms, all {listed:,} in {listed_in:.1f} s "
                    f"({listed / listed_in:,.0f} paths/s)",
                    flush=True,
                )
                for name, pythonpath in versions:
                    out = tmp / f"out-{count}-{len(rows)}.jsonl"
                    first, rss, records = whole_process(root, out, args.model, args.run_seconds, pythonpath)
                    print(
                        f"  {name}: first record {first:.2f} s, peak RSS {rss:,.0f} MB, {records:,} records", flush=True
                    )
                    rows.append((count, name, first, rss, records))
                    out.unlink(missing_ok=True)
        finally:
            if args.compare_ref:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "ref")], check=False)
    print()
    print(f"| inputs | version | first record (s) | peak RSS after {args.run_seconds:.0f} s (MB) | records by then |")
    print("|---:|---|---:|---:|---:|")
    for count, name, first, rss, records in rows:
        print(f"| {count:,} | {name} | {first:.2f} | {rss:,.0f} | {records:,} |")


if __name__ == "__main__":
    main()
