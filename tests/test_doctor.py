"""``imgclassify doctor``: every check present, the parity check really compares, exit codes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import SAMPLES
from imgclassify import doctor
from imgclassify.cli import app

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
    from imgclassify.capabilities import cpu_description

    assert checks["cpu"]["detail"].startswith(cpu_description())


def test_parity_check_on_a_real_photo() -> None:
    check = doctor.check_parity(SAMPLES / "kitten.jpg")
    assert check.status is doctor.Status.OK and "kitten.jpg" in check.detail


def test_parity_check_fails_when_preprocessing_drifts(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    import imgclassify.imaging as imaging

    original = imaging.preprocess
    monkeypatch.setattr(imaging, "preprocess", lambda image, config: original(image, config).roll(1, dims=2))
    code, report = run_json(runner)
    parity = report["checks"][-1]  # type: ignore[index]
    assert code == 1 and report["ok"] is False
    assert parity["status"] == "fail" and parity["detail"].endswith("FAIL")


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
