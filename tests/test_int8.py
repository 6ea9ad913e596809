"""--precision int8: NNCF post-training quantization on the bundled calibration set, run by OpenVINO.

Accuracy (EfficientNet-Lite0, the 50 labelled photos, which are not in the calibration set):
at most 2 fewer top-1 hits than fp32. The quantized model is cached by model, weights, and
calibration set; the run manifest records the calibration set's hash, and --resume refuses to
mix int8 and fp32 records.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import LABELLED, ROOT, SAMPLES
from imgclassify.cli import app
from imgclassify.inference.calibration import calibration_photos, calibration_sha256, calibration_views
from imgclassify.models.labels import imagenet_labels
from imgclassify.models.registry import get_spec

LITE0 = get_spec("efficientnet_lite0").preprocess


def test_calibration_set_is_fixed_and_not_the_test_photos() -> None:
    names = [name for name, _ in calibration_photos()]
    assert names == sorted(p.name for p in SAMPLES.glob("*.jpg"))
    assert not set(names) & {p.name for p in LABELLED.glob("*.JPEG")}
    first = [v.tobytes() for v in calibration_views(LITE0, 9)]
    assert [v.tobytes() for v in calibration_views(LITE0, 9)] == first  # seeded: the same views every time
    assert len(set(first)) == 9 and next(calibration_views(LITE0, 1)).shape == (3, 224, 224)
    assert calibration_sha256(LITE0) == calibration_sha256(LITE0)
    assert calibration_sha256(LITE0) != calibration_sha256(LITE0, 200)
    bigger = type(LITE0)(320, 288, LITE0.interpolation, LITE0.mean, LITE0.std)
    assert calibration_sha256(LITE0) != calibration_sha256(bigger)


@pytest.fixture(scope="module")
def int8_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    pytest.importorskip("nncf", reason="the openvino extra (with nncf) is not installed")
    return tmp_path_factory.mktemp("int8-cache")


def _hits(preds: list[Any]) -> int:
    index_of = {label.wnid: i for i, label in enumerate(imagenet_labels())}
    return sum(p.class_id == index_of[Path(p.path).name.split("_")[0]] for p in preds)


@pytest.mark.slow
def test_int8_first_run_quantizes_and_stdout_has_only_records(int8_cache: Path) -> None:
    """The first run quantizes (NNCF logs and draws progress bars on stdout: kept off it)."""
    env = {**os.environ, "IMGCLASSIFY_CACHE": str(int8_cache), "IMGCLASSIFY_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "imgclassify",
        "predict",
        str(SAMPLES / "labrador.jpg"),
        str(SAMPLES / "kitten.jpg"),
    ]
    out = subprocess.run(
        [*command, "-m", "efficientnet_lite0", "--precision", "int8", "-f", "jsonl"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(records) == 2 and records[0]["class_id"] == 208 and 281 <= records[1]["class_id"] <= 285
    assert list((int8_cache / "openvino-int8").glob("*.xml"))  # it did quantize, in this run


@pytest.mark.slow
def test_int8_manifest_and_resume(int8_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLASSIFY_CACHE", str(int8_cache))
    runner = CliRunner()
    out = tmp_path / "out.jsonl"
    photo = str(SAMPLES / "labrador.jpg")
    result = runner.invoke(app, ["predict", photo, "-m", "efficientnet_lite0", "--precision", "int8", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    assert json.loads(out.read_text())["class_id"] == 208  # Labrador_retriever
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    assert (manifest["device"], manifest["precision"]) == ("cpu", "int8")
    assert manifest["quantization"]["calibration_sha256"] == calibration_sha256(LITE0)
    assert manifest["quantization"]["calibration_images"] == 300
    assert manifest["versions"]["nncf"] and manifest["versions"]["openvino"]
    before = out.read_bytes()
    result = runner.invoke(app, ["predict", photo, "-m", "efficientnet_lite0", "-o", str(out), "--resume"])
    assert result.exit_code == 2
    assert "precision: int8 -> fp32" in result.stderr and "calibration sha256: " in result.stderr
    assert out.read_bytes() == before


@pytest.mark.slow
def test_int8_accuracy_and_cache(lite0, int8_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from imgclassify import load_classifier

    monkeypatch.setenv("IMGCLASSIFY_CACHE", str(int8_cache))
    photos = sorted(LABELLED.glob("*.JPEG"))
    fp32 = list(lite0.predict(photos, batch_size=8, workers=0))
    clf = load_classifier("efficientnet_lite0", device="auto", precision="int8")
    assert clf.backend.name == "openvino-int8" and str(clf.device) == "cpu"
    int8 = list(clf.predict(photos, batch_size=8, workers=0))
    # measured: fp32 44/50, int8 44/50, the same top-1 on 47/50
    assert _hits(fp32) == 44
    assert _hits(int8) >= _hits(fp32) - 2, f"int8 {_hits(int8)}/50 against fp32 {_hits(fp32)}/50"
    assert sum(a.class_id == b.class_id for a, b in zip(fp32, int8, strict=True)) >= 46
    cached = list((int8_cache / "openvino-int8").glob("efficientnet_lite0-224-*-cal*.xml"))
    assert len(cached) == 1 and calibration_sha256(LITE0)[:16] in cached[0].name

    # a second load reads the cache: no quantization
    import nncf

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("quantized again instead of reading the cache")

    monkeypatch.setattr(nncf, "quantize", refuse)
    again = load_classifier("efficientnet_lite0", device="cpu", precision="int8")
    assert [p.class_id for p in again.predict(photos[:8], batch_size=8)] == [p.class_id for p in int8[:8]]
