"""The console script's exit: past torch's teardown once a command is done, with every output
written, the exit handlers run and the exit code kept; a normal exit otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SAMPLES

pytestmark = pytest.mark.slow  # fresh processes importing torch

# A stand-in for what the interpreter's teardown would run: __del__ of a module global (torch's
# C++ teardown is of this kind), and an atexit handler (temporary directories, Ray, logging).
PROBE = """
import atexit, sys
class TornDown:
    def __del__(self):
        sys.stderr.write("probe: torn down\\n")
probe = TornDown()
atexit.register(lambda: sys.stderr.write("probe: atexit ran\\n"))
sys.argv = ["imgclassify", *sys.argv[1:]]
from imgclassify.cli import entry_point
entry_point()
"""


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=cwd, timeout=300,
        env={"IMGCLASSIFY_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def test_a_finished_run_skips_the_teardown_and_keeps_its_outputs(tmp_path: Path) -> None:
    kitten = str(SAMPLES / "kitten.jpg")
    out = run("predict", kitten, "-m", "efficientnet_lite0", "-d", "cpu", "-o", "out.jsonl", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "probe: atexit ran" in out.stderr and "probe: torn down" not in out.stderr
    assert out.stderr.splitlines()[-2].startswith("imgclassify: 1 classified, 0 failed")  # flushed
    assert json.loads((tmp_path / "out.jsonl").read_text())["class_id"] == 282
    assert json.loads((tmp_path / "out.jsonl.manifest.json").read_text())["status"] == "complete"

    out = run("predict", kitten, "-m", "efficientnet_lite0", "-d", "cpu", "-q", cwd=tmp_path)  # stdout, a pipe
    assert out.returncode == 0 and json.loads(out.stdout)["class_id"] == 282


def test_exit_codes_are_kept(tmp_path: Path) -> None:
    out = run("predict", str(SAMPLES / "kitten.jpg"), "-m", "efficientnet_lite0", "--top-k", "0", cwd=tmp_path)
    assert out.returncode == 2 and "--top-k" in out.stderr  # refused before torch is imported: normal exit
    assert "probe: torn down" in out.stderr
    out = run("predict", str(tmp_path / "missing.jpg"), "-m", "efficientnet_lite0", "-d", "cpu", cwd=tmp_path)
    assert out.returncode == 2 and "missing.jpg" in out.stderr, out.stderr


def test_commands_without_torch_exit_normally(tmp_path: Path) -> None:
    out = run("models", cwd=tmp_path)
    assert out.returncode == 0 and "efficientnet_lite0" in out.stdout
    assert out.stderr.splitlines() == ["probe: atexit ran", "probe: torn down"]
