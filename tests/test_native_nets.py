"""The native EfficientNet-Lite0 and DenseNet-121 (imgclassify.models.nets) against timm's and torchvision's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from conftest import SAMPLES
from imgclassify.cli import app
from imgclassify.models.nets.densenet import DenseNet121
from imgclassify.models.nets.efficientnet_lite import EfficientNetLite0


def _randomize(model: nn.Module) -> dict[str, torch.Tensor]:
    """Random BatchNorm statistics and affine terms and classifier bias on top of the model's own
    random init, so that eps, every BatchNorm and the head matter (outputs stay of order 1)."""
    torch.manual_seed(0)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("running_var"):
            value.uniform_(0.5, 2.0)
        elif key.endswith(("running_mean", "bias")):
            value.normal_(0, 0.1)
        elif key.endswith("weight") and value.ndim == 1:
            value.uniform_(0.5, 1.5)
    model.load_state_dict(state)
    return state


def _compare(reference: nn.Module, ours: nn.Module, size: tuple[int, int]) -> None:
    assert list(ours.state_dict()) == list(reference.state_dict())
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    ours.load_state_dict(_randomize(reference), strict=True)
    reference.eval()
    ours.eval()
    torch.manual_seed(1)
    x = torch.randn(2, 3, *size)
    with torch.inference_mode():
        expected, got = reference(x), ours(x)
    assert got.shape == expected.shape == (2, 1000)
    assert 0.01 < float(expected.abs().max()) < 1e4  # a meaningful scale for the tolerance
    assert float((got - expected).abs().max()) <= 1e-6
    assert torch.equal(got, expected)  # the same operations in the same order: bit-identical


@pytest.mark.slow
@pytest.mark.parametrize("size", [(224, 224), (225, 199)])
def test_efficientnet_lite0_equals_timm(size: tuple[int, int]) -> None:
    import timm

    _compare(timm.create_model("tf_efficientnet_lite0", pretrained=False), EfficientNetLite0(), size)


@pytest.mark.slow
@pytest.mark.parametrize("size", [(224, 224), (225, 199)])
def test_densenet121_equals_torchvision(size: tuple[int, int]) -> None:
    import torchvision

    _compare(torchvision.models.densenet121(weights=None), DenseNet121(), size)


def test_other_class_counts_keep_the_keys() -> None:
    import timm

    ours, theirs = EfficientNetLite0(num_classes=7), timm.create_model("tf_efficientnet_lite0", num_classes=7)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert DenseNet121(num_classes=7).classifier.weight.shape == (7, 1024)


def _imported_modules(*args: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``imgclassify ARGS`` with ``-X importtime``: its result and every module it imported."""
    env = {**os.environ, "TORCH_HOME": str(tmp_path), "IMGCLASSIFY_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "imgclassify", *args, "-f", "jsonl", "-q"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    modules = {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" in modules  # the importtime log was read
    return out, modules


@pytest.mark.slow
def test_predict_lite0_never_imports_timm_or_torchvision(tmp_path: Path) -> None:
    args = ("predict", str(SAMPLES / "kitten.jpg"), "-m", "efficientnet_lite0", "-d", "cpu")
    out, modules = _imported_modules(*args, tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads(out.stdout)
    # the default (reduced-scale) decoding of this 1,000+ px JPEG; the last printed decimal can
    # differ between CPUs (0.558486 and 0.558487 with --exact-decode on a Xeon and an EPYC)
    assert record["class_id"] == 282 and abs(record["probability"] - 0.5937715) <= 2e-6
    assert {m.split(".")[0] for m in modules} & {"timm", "torchvision"} == set()


@pytest.mark.slow
def test_predict_densenet_weights_never_imports_timm_or_torchvision(tmp_path: Path, densenet_weights: Path) -> None:
    weights = ("--weights", str(densenet_weights))
    args = ("predict", str(SAMPLES / "kitten.jpg"), "-m", "densenet121", *weights, "-d", "cpu")
    out, modules = _imported_modules(*args, tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert '"class_id"' in out.stdout
    assert {m.split(".")[0] for m in modules} & {"timm", "torchvision"} == set()


def test_a_run_to_stdout_does_not_hash_the_weights(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sha256 of the weights is provenance for the manifest and --resume: none of it here."""
    import imgclassify.models.plan as model_plan

    def no_hash(path: Path) -> str:
        raise AssertionError(f"hashed {path}")

    monkeypatch.setattr(model_plan, "sha256_file", no_hash)
    args = ["predict", str(SAMPLES / "kitten.jpg"), "-m", "efficientnet_lite0", "-d", "cpu", "-f", "jsonl"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["class_id"] == 282
