"""``imgclassify doctor``: every check present, the parity check really compares, exit codes."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import SAMPLES
from imgclassify import doctor
from imgclassify.cli import app
from imgclassify.decode import resize
from imgclassify.system.paths import cache_dir

NAMES = [
    "python", "torch", "accelerators", "openvino", "serve extra", "cpu", "allocator", "weights cache",
    "offline models", "preprocessing parity",
]  # fmt: skip


def run_json(runner: CliRunner, *args: str) -> tuple[int, dict[str, object]]:
    result = runner.invoke(app, ["doctor", "--format", "json", *args], catch_exceptions=False)
    return result.exit_code, json.loads(result.stdout)


def test_doctor_json_reports_every_check(runner: CliRunner) -> None:
    code, report = run_json(runner)
    checks = {c["name"]: c for c in report["checks"]}  # type: ignore[attr-defined]
    assert code == 0 and report["ok"] is True
    assert list(checks) == NAMES
    import torch

    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    assert checks["torch"]["detail"].startswith(f"{torch.__version__}, {build}")
    assert "efficientnet_lite0" in checks["offline models"]["detail"]
    parity = checks["preprocessing parity"]
    assert parity["status"] == "ok" and parity["detail"].endswith("pass")
    from imgclassify.system.capabilities import cpu_description

    assert checks["cpu"]["detail"].startswith(cpu_description())


def test_parity_check_on_a_real_photo() -> None:
    check = doctor.check_parity(SAMPLES / "kitten.jpg")  # 720x720: the default would decode it at reduced scale
    assert check.status is doctor.Status.OK and "kitten.jpg with --exact-decode" in check.detail


def test_parity_check_holds_the_large_sample_to_the_exact_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """The large sample (at least twice the resize size) decoded as by default is not torchvision's
    pixels: the check decodes it with --exact-decode, and fails if that decodes at reduced scale."""
    from imgclassify.decode import imaging

    monkeypatch.setitem(
        imaging.DECODE_MODES, imaging.DecodeMode.EXACT, imaging.DECODE_MODES[imaging.DecodeMode.REDUCED]
    )
    check = doctor.check_parity()
    assert check.status is doctor.Status.FAIL and check.detail.endswith("FAIL")


def test_parity_check_fails_when_preprocessing_drifts(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    import imgclassify.decode.imaging as imaging

    original = imaging.preprocess
    monkeypatch.setattr(imaging, "preprocess", lambda image, config: original(image, config).roll(1, dims=2))
    code, report = run_json(runner)
    parity = report["checks"][-1]  # type: ignore[index]
    assert code == 1 and report["ok"] is False
    assert parity["status"] == "fail" and parity["detail"].endswith("FAIL")


@pytest.mark.skipif(not resize.fast_kernels(), reason="torch's AVX2 uint8 kernels do not run here")
def test_parity_check_covers_both_resizes() -> None:
    """Pillow's resize (exact, limit 1e-5) on the small generated JPEG, decoded as by default, torch's
    uint8 resize (limit 1 level) on the large one, decoded with --exact-decode (by default it would
    be decoded at reduced scale); a file is held to the limit of the resize it takes."""
    check = doctor.check_parity()
    assert check.status is doctor.Status.OK
    small, large = check.detail.split("; on ")
    assert "640x427 JPEG (Pillow's resize): max abs difference" in small and "(limit 1e-05)" in small
    size = f"{doctor.LARGE_SAMPLE[0]}x{doctor.LARGE_SAMPLE[1]}"
    assert f"{size} JPEG with --exact-decode (torch's uint8 resize): 1 level at most" in large
    assert large.endswith("(limit 1 level): pass")


@pytest.mark.skipif(not resize.fast_kernels(), reason="torch's AVX2 uint8 kernels do not run here")
def test_parity_check_fails_when_torchs_resize_drifts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two levels off on the large image only: the Pillow half passes, the check fails."""
    original = resize.resize
    monkeypatch.setattr(resize, "resize", lambda *args, **kwargs: original(*args, **kwargs).clip(0, 253) + 2)
    check = doctor.check_parity()
    assert check.status is doctor.Status.FAIL and check.detail.endswith("FAIL")
    assert re.search(r"\(torch's uint8 resize\): [23] levels at most", check.detail), check.detail


def test_allocator_check_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    assert doctor.check_allocator().detail.startswith("tcmalloc preloaded")
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setenv("IMGCLASSIFY_NO_MALLOPT", "1")
    if "tcmalloc" not in doctor._loaded_libraries():
        assert doctor.check_allocator().status is doctor.Status.WARN


def test_doctor_table(runner: CliRunner) -> None:
    result = runner.invoke(app, ["doctor"], env={"COLUMNS": "200"}, catch_exceptions=False)
    assert result.exit_code == 0
    assert "imgclassify doctor" in result.stdout and "all checks passed" in result.stdout
    assert all(name in result.stdout for name in NAMES)


def test_doctor_table_into_a_pipe_keeps_brackets_and_whole_paths(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Not a terminal: nothing is wrapped (one line per check) and `[openvino]` is text, not markup."""
    torch_home = tmp_path / ("a-torch-home-with-a-long-name-" * 3).rstrip("-")
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("IMGCLASSIFY_CACHE", str(tmp_path / ("an-imgclassify-cache-with-a-long-name-" * 2)))
    real_version = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda package: None if package == "openvino" else real_version(package))
    result = runner.invoke(app, ["doctor"], env={"COLUMNS": "80"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert [line.split()[0] for line in lines] == ["imgclassify", "check", *(n.split()[0] for n in NAMES), "all"]
    by_name = dict(zip(NAMES, lines[2:-1], strict=True))
    openvino = doctor.check_openvino().detail  # as the JSON output says it
    assert "'imgclassify[openvino]'" in openvino and by_name["openvino"].rstrip().endswith(f"info    {openvino}")
    cache = torch_home / "hub" / "checkpoints"
    assert f"{cache} (not created yet); imgclassify's own cache {cache_dir()}" in by_name["weights cache"]
    assert f"({sys.executable})" in by_name["python"]
    assert lines[-1] == "all checks passed"


def test_doctor_table_on_a_terminal_fits_it_without_cutting_paths() -> None:
    """On an 80-column terminal every line fits: details wrap between words, a path stays whole."""
    from rich.console import Console

    path = "/a/path/of/forty/five/characters/to/keep/whole"
    checks = [
        doctor.Check("weights cache", doctor.Status.INFO, f"{path} (exists); pip install 'imgclassify[x]' " * 2),
        doctor.Check("openvino", doctor.Status.INFO, "not installed: pip install 'imgclassify[openvino]'"),
    ]
    out = io.StringIO()
    doctor.print_table(checks, False, Console(file=out, force_terminal=True, width=80, color_system=None))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert sum(path in line for line in lines) == 2 and "'imgclassify[openvino]'" in lines[-2]
    assert lines[-1] == "some checks failed"
