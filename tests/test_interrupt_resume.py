"""Interruption, kill-and-resume, --max-failures, out-of-memory retries."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import SAMPLES, parse_jsonl
from imgclassify.cli import app

COUNT = 300
EXTRA = ["-m", "efficientnet_lite0", "-b", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(COUNT):
        shutil.copy(SAMPLES / "kitten_small.jpg", folder / f"img{i:03d}.jpg")
    return folder


def start(args: list[str], tmp_path: Path) -> subprocess.Popen[str]:
    exe = shutil.which("imgclassify", path=str(Path(sys.executable).parent)) or "imgclassify"
    env = {**os.environ, "IMGCLASSIFY_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "th")}
    return subprocess.Popen(
        [exe, "predict", *args, *EXTRA],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        # a shell's background job (CI started with `&`) ignores SIGINT, and its children inherit
        # that: Python then installs no KeyboardInterrupt handler. Ctrl-C at a terminal is what is tested.
        preexec_fn=_default_sigint,
    )  # fmt: skip


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_records(path: Path, proc: subprocess.Popen[str], at_least: int = 8) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if path.exists() and path.read_text(errors="replace").count("\n") > at_least:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("no records within 120 s")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code", "fmt"), [(signal.SIGINT, 130, "json"), (signal.SIGTERM, 143, "jsonl"), (signal.SIGINT, 130, "csv")]
)
def test_signal_stops_cleanly_with_valid_output(corpus: Path, tmp_path: Path, sig: int, code: int, fmt: str) -> None:
    out = tmp_path / f"out.{fmt}"
    proc = start([str(corpus), "-o", str(out)], tmp_path)
    wait_for_records(out, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert f"interrupted by {signal.Signals(sig).name}" in stderr
    text = out.read_text()
    if fmt == "json":
        records = json.loads(text)  # closed as a valid array
    elif fmt == "jsonl":
        records = parse_jsonl(text)
        assert text.endswith("\n")
    else:
        records = list(csv.DictReader(io.StringIO(text, newline="")))
    assert 0 < len(records) < COUNT
    assert all(r["class_id"] not in (None, "") for r in records)
    # the manifest was completed after the signal, atomically, with the counts of what was written
    manifest = json.loads((tmp_path / f"out.{fmt}.manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["finished_at"]
    assert manifest["command"] == ["imgclassify", "predict", str(corpus), "-o", str(out), *EXTRA]
    assert manifest["counts"]["classified"] == len(records) and manifest["counts"]["inputs"] == COUNT
    assert not list(tmp_path.glob(".*.tmp")), "a temporary manifest was left behind"


@pytest.mark.slow
@pytest.mark.parametrize(("how", "fmt"), [("SIGKILL", "jsonl"), ("SIGINT", "jsonl"), ("SIGKILL", "csv")])
def test_kill_and_resume_gives_exactly_one_record_per_input(corpus: Path, tmp_path: Path, how: str, fmt: str) -> None:
    out = tmp_path / f"out.{fmt}"
    proc = start([str(corpus), "-o", str(out)], tmp_path)
    wait_for_records(out, proc, at_least=20)
    proc.send_signal(getattr(signal, how))
    proc.communicate(timeout=60)
    before = out.read_text()
    # a record cut in half, as a kill in the middle of a write would leave it
    with open(out, "a") as stream:
        stream.write('{"path": "' + str(corpus / "img2") if fmt == "jsonl" else str(corpus / "img2"))
    resumed = start([str(corpus), "-o", str(out), "--resume"], tmp_path)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    text = out.read_text()
    records = parse_jsonl(text) if fmt == "jsonl" else list(csv.DictReader(io.StringIO(text, newline="")))
    paths = [str(r["path"]) for r in records]
    expected = sorted(str(p) for p in corpus.iterdir())
    done_first = before.count("\n") - (1 if fmt == "csv" else 0)
    print(f"\n{how}/{fmt}: {COUNT} inputs, {done_first} recorded before the kill, "
          f"{len(records)} records after resume, {len(paths) - len(set(paths))} duplicates, "
          f"{len(set(expected) - set(paths))} missing")  # fmt: skip
    assert sorted(paths) == expected  # exactly one record per input: none missing, no duplicates
    assert f"{done_first} already in the output" in stderr
    assert all(str(r["class_id"]) == "281" for r in records)


@pytest.mark.parametrize("limit", ["2", "20%"])
def test_max_failures_stops_early_with_valid_output(runner, tmp_path: Path, bad_files, limit: str) -> None:  # type: ignore[no-untyped-def]
    inputs = []
    for i in range(6):
        inputs.append(
            str(SAMPLES / ["kitten.jpg", "dog.jpg", "labrador.jpg", "brittany.jpg", "bus.jpg", "three_dogs.jpg"][i])
        )
        if i < 4:
            inputs.append(str(list(bad_files.values())[i]))
    result = runner.invoke(
        app, ["predict", *inputs, "-m", "efficientnet_lite0", "-b", "1", "-f", "json", "--max-failures", limit]
    )
    assert result.exit_code == 1
    records = json.loads(result.stdout)
    assert sum(r["error"] is not None for r in records) == 3  # stopped at the third failure (> 2)
    assert len(records) == 6 and "stopped early: too many failures" in result.stderr


def test_bad_max_failures_is_a_usage_error(runner) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(
        app, ["predict", str(SAMPLES / "dog.jpg"), "-m", "efficientnet_lite0", "--max-failures", "lots"]
    )
    assert result.exit_code == 2 and "--max-failures" in result.stderr


def test_resume_needs_a_resumable_output(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    args = ["predict", str(SAMPLES / "dog.jpg"), "-m", "efficientnet_lite0", "--resume"]
    assert "--resume needs --output" in runner.invoke(app, args).stderr
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and "jsonl or csv" in result.stderr


def test_out_of_memory_halves_the_batch(
    lite0: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    photos = sorted(SAMPLES.glob("*.jpg"))
    expected = list(lite0.predict(photos, batch_size=8, workers=0))
    model = lite0.backend.inner.model  # the torch module inside the out-of-memory wrapper
    real_forward = type(model).forward
    sizes: list[int] = []

    def limited(self, x):  # type: ignore[no-untyped-def]
        sizes.append(len(x))
        if len(x) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(self, x)

    monkeypatch.setattr(type(model), "forward", limited)
    try:
        got = list(lite0.predict(photos, batch_size=8, workers=0))
    finally:
        lite0.backend.limit = None
    for a, b in zip(got, expected, strict=True):
        assert [c.class_id for c in a.top] == [c.class_id for c in b.top]
        assert a.probability == pytest.approx(b.probability, abs=1e-4)
    assert sizes[:2] == [7, 3] and max(sizes[2:]) == 1  # 7 -> 3 -> 1, then 1 for the rest of the run
    warnings = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert len(warnings) == 2 and "retrying at 3" in warnings[0] and "retrying at 1" in warnings[1]
