"""Every kind of ``--model`` (issue 21): timm names and folders, Hugging Face repositories from the
cache, transformers folders, exported files (ONNX, TorchScript, ``torch.export``), the
preprocessing overrides, multi-label heads, the manifest's provenance and ``--resume``.

Everything is offline: the models are tiny ones made here with random weights (the bundled
EfficientNet-Lite0 is the one real model, exported to each file format), and the Hugging Face and
torch hub caches are empty folders in tmp unless a test fills them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import LABELLED, SAMPLES
from imgclassify import load_classifier
from imgclassify.cli import app
from imgclassify.errors import CheckpointError, UnknownModelError, UsageError, WeightsUnavailableError
from imgclassify.models.kinds import ModelKind, parse_reference
from imgclassify.options import ModelOptions

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

#: timm's smallest test network (0.37 M parameters): input 160, crop_pct 0.95, bilinear, mean = std = 0.5
TIMM_NAME = "test_resnet.r160_in1k"
TIMM_LABELS = ["ant", "bee", "cat", "dog", "eel"]
VIT_LABELS = ["apple", "banana", "cherry"]
PHOTOS = [str(SAMPLES / "kitten.jpg"), str(SAMPLES / "labrador.jpg")]
#: EfficientNet-Lite0's own recipe, for the exported files that carry none
LITE0_RECIPE: dict[str, Any] = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic"}


def invoke(runner: CliRunner, *args: object):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def records(output: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.read_text().splitlines() if line.strip()]


def manifest_of(output: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(output.with_name(output.name + ".manifest.json").read_text())
    return data


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache in tmp (huggingface_hub read its location at import: patched too)."""
    from huggingface_hub import constants

    home = tmp_path_factory.mktemp("hf_home")
    cache = home / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return cache


def place_in_hf_cache(cache: Path, repo: str, folder: Path, commit: str, ref: str | None = "main") -> Path:
    """``folder``'s files as huggingface_hub stores a repository: blobs by hash, a snapshot per commit
    of symlinks to them, and ``refs/<ref>`` naming the commit."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in sorted(folder.iterdir()):
        digest = sha256(file)
        shutil.copyfile(file, root / "blobs" / digest)
        os.symlink(os.path.join("..", "..", "blobs", digest), snapshot / file.name)
    if ref is not None:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return snapshot


# -- the tiny models, made once ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_timm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 5-class timm test_resnet with random weights: as .safetensors, a state_dict .pth, a pickled
    pytorch_model.bin, and a timm-layout folder (save_for_hf: config.json with label_names)."""
    from safetensors.torch import save_file
    from timm.models._hub import save_for_hf

    root = tmp_path_factory.mktemp("timm")
    torch.manual_seed(0)
    model = timm.create_model(TIMM_NAME, num_classes=5).eval()
    files = {
        "safetensors": root / "tiny.safetensors",
        "pth": root / "tiny.pth",
        "bin": root / "bin" / "pytorch_model.bin",
        "folder": root / "tiny-timm",
        "bin_folder": root / "tiny-timm-bin",
    }
    save_file(model.state_dict(), files["safetensors"])
    torch.save(model.state_dict(), files["pth"])
    files["bin"].parent.mkdir()
    torch.save(model.state_dict(), files["bin"])
    save_for_hf(model, str(files["folder"]), model_config={"label_names": TIMM_LABELS}, safe_serialization=True)
    save_for_hf(model, str(files["bin_folder"]), model_config={"label_names": TIMM_LABELS})  # pytorch_model.bin
    return files


def _tiny_vit(folder: Path, *, multi_label: bool = False) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(1)
    config = ViTConfig(
        image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, id2label=dict(enumerate(VIT_LABELS)),
        label2id={name: i for i, name in enumerate(VIT_LABELS)},
        problem_type="multi_label_classification" if multi_label else None,
    )  # fmt: skip
    model = ViTForImageClassification(config).eval()  # type: ignore[no-untyped-call]
    if multi_label:  # scores far apart, whatever the image: sigmoid(2, 0, -2) = 0.88, 0.5, 0.12
        with torch.no_grad():
            model.classifier.weight.mul_(0.001)
            model.classifier.bias.copy_(torch.tensor([2.0, 0.0, -2.0]))
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 64, "width": 64}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        folder
    )
    return folder


@pytest.fixture(scope="module")
def vit_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny transformers ViTs (3 labels, 64 px) written by save_pretrained: single- and multi-label."""
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("vit")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"vit": _tiny_vit(root / "vit3"), "multi": _tiny_vit(root / "vit3-multi", multi_label=True)}


@pytest.fixture(scope="module")
def vit(vit_folders: dict[str, Path]):  # type: ignore[no-untyped-def]
    return load_classifier(str(vit_folders["vit"]), device="cpu")


# -- timm ------------------------------------------------------------------------------------------


def test_timm_name_with_safetensors_weights(runner: CliRunner, tiny_timm: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    result = invoke(runner, "predict", *PHOTOS, "-m", f"timm:{TIMM_NAME}", "--weights", tiny_timm["safetensors"],
                    "-k", "5", "-o", out)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    rows = records(out)
    assert len(rows) == 2
    for row in rows:
        assert sorted(c["class_name"] for c in row["top_k"]) == [f"class_{i}" for i in range(5)]
        assert sum(c["probability"] for c in row["top_k"]) == pytest.approx(1, abs=1e-5)
    manifest = manifest_of(out)
    assert manifest["model"]["kind"] == "timm" and manifest["model"]["name"] == f"timm:{TIMM_NAME}"
    assert manifest["model"]["source"]["name"] == TIMM_NAME
    pre = manifest["preprocessing"]
    # timm's pretrained_cfg: input 160, crop_pct 0.95 -> shorter side floor(160 / 0.95) = 168, bilinear, 0.5
    assert (pre["resize"], pre["crop"], pre["interpolation"]) == (168, 160, "bilinear")
    assert pre["mean"] == [0.5] * 3 and pre["std"] == [0.5] * 3
    assert manifest["weights"]["sha256"] == sha256(tiny_timm["safetensors"])
    assert manifest["labels"]["source"].startswith("generic") and manifest["labels"]["count"] == 5


def test_timm_state_dict_pth_and_pickled_bin_give_the_same_scores(tiny_timm: dict[str, Path]) -> None:
    probs = []
    for key in ("safetensors", "pth", "bin"):
        classifier = load_classifier(f"timm:{TIMM_NAME}", weights=tiny_timm[key], device="cpu")
        assert classifier.num_classes == 5 and classifier.plan.kind is ModelKind.TIMM
        probs.append([c.probability for c in classifier.predict_file(SAMPLES / "kitten.jpg", top_k=5).top])
    assert probs[0] == probs[1] == probs[2]


def test_a_pickle_that_runs_code_is_refused(runner: CliRunner, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (marker,))

    evil = tmp_path / "pytorch_model.bin"
    torch.save({"fc.weight": Payload()}, evil)
    from imgclassify.models.weights import read_state_dict

    with pytest.raises(CheckpointError, match="weights only"):
        read_state_dict(evil)
    result = invoke(runner, "predict", PHOTOS[0], "-m", f"timm:{TIMM_NAME}", "--weights", evil)
    assert result.exit_code == 2 and "weights only" in result.stderr
    assert not marker.exists()


def test_timm_folder_gives_its_label_names(runner: CliRunner, tiny_timm: dict[str, Path], tmp_path: Path) -> None:
    config = json.loads((tiny_timm["folder"] / "config.json").read_text())
    assert config["label_names"] == TIMM_LABELS and config["architecture"] == "test_resnet"
    for key in ("folder", "bin_folder"):  # model.safetensors, and save_for_hf's default pytorch_model.bin
        out = tmp_path / f"{key}.jsonl"
        result = invoke(runner, "predict", *PHOTOS, "-m", tiny_timm[key], "-k", "5", "-o", out)
        assert result.exit_code == 0, result.stderr
        for row in records(out):
            assert row["class_name"] in TIMM_LABELS
            assert sorted(c["class_name"] for c in row["top_k"]) == sorted(TIMM_LABELS)
        manifest = manifest_of(out)
        assert manifest["model"]["kind"] == "timm" and manifest["labels"]["source"] == "model"
        assert manifest["model"]["files"] == [
            {"path": str(tiny_timm[key] / "config.json"), "sha256": sha256(tiny_timm[key] / "config.json")}
        ]
        assert (manifest["preprocessing"]["resize"], manifest["preprocessing"]["crop"]) == (168, 160)
    safetensors = load_classifier(str(tiny_timm["folder"]), device="cpu").predict_file(SAMPLES / "kitten.jpg")
    state_dict = load_classifier(f"timm:{TIMM_NAME}", weights=tiny_timm["pth"], device="cpu").predict_file(
        SAMPLES / "kitten.jpg"
    )
    assert (safetensors.class_id, safetensors.probability) == (state_dict.class_id, state_dict.probability)
    assert state_dict.class_id is not None and safetensors.class_name == TIMM_LABELS[state_dict.class_id]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("timm:nosuchmodel", ["timm has no model 'nosuchmodel'", "imgclassify models --search"]),
        ("timm:resnet5", ["Did you mean: timm:resnet"]),
        ("timm:resnet18.nosuchtag", ["no pretrained tag", "resnet18.a1_in1k"]),
    ],
)
def test_timm_unknown_names_say_the_fix(runner: CliRunner, model: str, expected: list[str]) -> None:
    result = invoke(runner, "predict", PHOTOS[0], "-m", model)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith("imgclassify: error: ") and "Traceback" not in result.stderr
    for text in expected:
        assert text in result.stderr


@pytest.mark.parametrize("how", ["--offline", "HF_HUB_OFFLINE"])
def test_timm_offline_without_cache_names_the_cache_and_weights(
    runner: CliRunner, empty_hf_cache: Path, offline_empty_cache: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    args = ["predict", PHOTOS[0], "-m", "timm:resnet18"]
    if how == "--offline":
        args.append("--offline")
    else:  # only huggingface_hub's own variable says offline
        monkeypatch.delenv("IMGCLASSIFY_OFFLINE")
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = invoke(runner, *args)
    assert result.exit_code == 2
    message = result.stderr
    assert "timm/resnet18.a1_in1k" in message and str(empty_hf_cache) in message
    assert str(offline_empty_cache / "hub" / "checkpoints") in message  # timm's older URL weights: torch's cache
    assert "--weights FILE" in message and "downloads are off" in message


def test_timm_pretrained_weights_come_from_the_hf_cache(
    runner: CliRunner, tiny_timm: dict[str, Path], empty_hf_cache: Path, tmp_path: Path
) -> None:
    """``timm:NAME`` without --weights reads timm's own file from the Hugging Face cache (placed here)."""
    files = tmp_path / "repo"
    files.mkdir()
    shutil.copyfile(tiny_timm["safetensors"], files / "model.safetensors")
    snapshot = place_in_hf_cache(empty_hf_cache, f"timm/{TIMM_NAME}", files, "1" * 40)
    out = tmp_path / "out.jsonl"
    result = invoke(runner, "predict", PHOTOS[0], "-m", f"timm:{TIMM_NAME}", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert records(out)[0]["class_name"] in [f"class_{i}" for i in range(5)]  # the file's 5 classes
    weights = manifest_of(out)["weights"]
    assert weights["source"] == "cache" and weights["path"] == str(snapshot / "model.safetensors")


# -- hf:ORG/REPO from the cache ---------------------------------------------------------------------


@pytest.fixture
def hf_cache(empty_hf_cache: Path, vit_folders: dict[str, Path], tiny_timm: dict[str, Path]) -> dict[str, str]:
    """org/vit3 at two commits (main: the single-label ViT; another: the multi-label one) and org/tiny-timm."""
    commits = {"main": "a" * 40, "other": "b" * 40, "timm": "c" * 40}
    place_in_hf_cache(empty_hf_cache, "org/vit3", vit_folders["vit"], commits["main"])
    place_in_hf_cache(empty_hf_cache, "org/vit3", vit_folders["multi"], commits["other"], ref=None)
    place_in_hf_cache(empty_hf_cache, "org/tiny-timm", tiny_timm["folder"], commits["timm"])
    return commits


def test_hf_repository_from_the_cache_with_hf_hub_offline(
    runner: CliRunner, hf_cache: dict[str, str], empty_hf_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from imgclassify.models.kinds.hub import hub_offline

    monkeypatch.delenv("IMGCLASSIFY_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_offline(ModelOptions())  # read at call time, not only when huggingface_hub was imported
    out = tmp_path / "out.jsonl"
    result = invoke(runner, "predict", *PHOTOS, "-m", "hf:org/vit3", "-k", "3", "-o", out)
    assert result.exit_code == 0, result.stderr
    for row in records(out):
        assert row["class_name"] in VIT_LABELS
        assert sum(c["probability"] for c in row["top_k"]) == pytest.approx(1, abs=1e-5)
    manifest = manifest_of(out)
    snapshot = empty_hf_cache / "models--org--vit3" / "snapshots" / hf_cache["main"]
    assert manifest["model"]["kind"] == "transformers" and manifest["model"]["name"] == "hf:org/vit3"
    assert manifest["model"]["source"] == {"repo": "org/vit3", "revision": None, "commit": hf_cache["main"]}
    assert manifest["weights"]["path"] == str(snapshot / "model.safetensors")
    assert [f["path"] for f in manifest["model"]["files"]] == [
        str(snapshot / "config.json"), str(snapshot / "preprocessor_config.json"),
    ]  # fmt: skip
    assert manifest["scores"] == "softmax"

    timm_out = tmp_path / "timm.jsonl"
    result = invoke(runner, "predict", PHOTOS[0], "-m", "hf:org/tiny-timm", "-o", timm_out)
    assert result.exit_code == 0, result.stderr
    assert records(timm_out)[0]["class_name"] in TIMM_LABELS
    assert manifest_of(timm_out)["model"]["kind"] == "timm"


def test_hf_revision_picks_its_snapshot(runner: CliRunner, hf_cache: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    result = invoke(runner, "predict", PHOTOS[0], "-m", f"hf:org/vit3@{hf_cache['other']}", "-o", out)
    assert result.exit_code == 0, result.stderr
    manifest = manifest_of(out)
    assert manifest["model"]["source"]["revision"] == manifest["model"]["source"]["commit"] == hf_cache["other"]
    assert manifest["scores"] == "sigmoid"  # that commit's head is multi-label
    assert hf_cache["other"] in manifest["weights"]["path"]


def test_hf_repository_not_in_the_cache(empty_hf_cache: Path, hf_cache: dict[str, str]) -> None:
    for model in ("hf:org/absent", f"hf:org/vit3@{'d' * 40}"):
        with pytest.raises(WeightsUnavailableError, match="not in the Hugging Face cache") as info:
            load_classifier(model, device="cpu")
        assert str(empty_hf_cache) in str(info.value) and "downloads are off" in str(info.value)


def test_references_are_parsed_by_kind(tmp_path: Path) -> None:
    assert parse_reference("densenet121").scheme == "registry"
    assert parse_reference("timm:convnext_tiny.fb_in22k").target == "convnext_tiny.fb_in22k"
    ref = parse_reference("hf:timm/resnet18.a1_in1k@main")
    assert (ref.scheme, ref.target, ref.revision) == ("hf", "timm/resnet18.a1_in1k", "main")
    assert parse_reference(str(tmp_path / "model.onnx")).scheme == "path"
    for bad in ("timm:", "hf:not-a-repo"):
        with pytest.raises(UnknownModelError):
            parse_reference(bad)


# -- transformers folders -------------------------------------------------------------------------


def test_transformers_vit_labels_and_preprocessing(
    runner: CliRunner, vit_folders: dict[str, Path], tmp_path: Path
) -> None:
    folder = vit_folders["vit"]
    out = tmp_path / "out.jsonl"
    result = invoke(runner, "predict", *PHOTOS, "-m", folder, "-k", "3", "-o", out)
    assert result.exit_code == 0, result.stderr
    for row in records(out):
        assert row["class_name"] in VIT_LABELS and row["wnid"] is None
        assert sorted(c["class_name"] for c in row["top_k"]) == VIT_LABELS
    manifest = manifest_of(out)
    model = manifest["model"]
    assert model["kind"] == "transformers" and model["architecture"] == "ViTForImageClassification"
    assert model["source"] == {"path": str(folder)}
    assert model["files"] == [
        {"path": str(folder / name), "sha256": sha256(folder / name)}
        for name in ("config.json", "preprocessor_config.json")
    ]
    assert manifest["weights"]["sha256"] == sha256(folder / "model.safetensors")
    pre = manifest["preprocessing"]
    assert (pre["resize"], pre["crop"], pre["interpolation"]) == (64, 64, "bilinear")  # resample 2
    assert pre["mean"] == [0.5] * 3 and pre["std"] == [0.5] * 3
    assert manifest["labels"]["source"] == "model" and manifest["labels"]["count"] == 3
    assert manifest["scores"] == "softmax"


def test_transformers_fixed_size_keeps_the_aspect_ratio(vit) -> None:  # type: ignore[no-untyped-def]
    """ViT's processor squashes to 64x64; here the shorter side goes to 64 and the center is cropped."""
    from PIL import Image

    from imgclassify.decode.imaging import preprocess

    wide = Image.new("RGB", (300, 100), (0, 0, 0))
    wide.paste((255, 255, 255), (60, 0, 240, 100))  # black ends that a squashed image would show
    tensor = preprocess(wide, vit.preprocess_config)
    assert tuple(tensor.shape) == (3, 64, 64) and int(tensor.min()) == 255


def test_multi_label_head_gives_sigmoid_scores_and_every_class_above_the_threshold(
    vit_folders: dict[str, Path],
) -> None:
    classifier = load_classifier(str(vit_folders["multi"]), device="cpu")
    assert classifier.plan.multi_label
    (pred,) = classifier.predict([SAMPLES / "kitten.jpg"], top_k=1, threshold=0.4)
    # sigmoid(2), sigmoid(0): both at or above 0.4, with top_k=1; softmax would give 0.87, 0.12
    assert [c.class_name for c in pred.top] == ["apple", "banana"]
    assert [c.probability for c in pred.top] == pytest.approx([0.8808, 0.5], abs=2e-3)
    assert pred.confident is True
    (everything,) = classifier.predict([SAMPLES / "kitten.jpg"], top_k=3)
    assert sum(c.probability for c in everything.top) == pytest.approx(1.5, abs=5e-3)  # not 1: one sigmoid each
    (none_above,) = classifier.predict([SAMPLES / "kitten.jpg"], top_k=1, threshold=0.95)
    assert [c.class_name for c in none_above.top] == ["apple"] and none_above.confident is False  # at least the best
    single = load_classifier(str(vit_folders["multi"]), device="cpu", multi_label=False)
    assert not single.plan.multi_label
    (pred,) = single.predict([SAMPLES / "kitten.jpg"], top_k=3)
    assert sum(c.probability for c in pred.top) == pytest.approx(1, abs=1e-5)


def test_multi_label_cli_manifest_and_records(runner: CliRunner, vit_folders: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    result = invoke(runner, "predict", *PHOTOS, "-m", vit_folders["multi"], "-k", "3", "--threshold", "0.4", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert manifest_of(out)["scores"] == "sigmoid"
    for row in records(out):
        scores = [c["probability"] for c in row["top_k"]]
        assert sum(scores) > 1.2 and row["confident"] is True
    forced = tmp_path / "forced.jsonl"  # --multi-label on a single-label model
    result = invoke(runner, "predict", PHOTOS[0], "-m", vit_folders["vit"], "--multi-label", "-o", forced)
    assert result.exit_code == 0 and manifest_of(forced)["scores"] == "sigmoid"


def test_multi_label_cli_lists_every_class_above_the_threshold_at_k_1(
    runner: CliRunner, vit_folders: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    result = invoke(runner, "predict", PHOTOS[0], "-m", vit_folders["multi"], "--threshold", "0.4", "-o", out)
    assert result.exit_code == 0, result.stderr
    (row,) = records(out)
    assert [c["class_name"] for c in row.get("top_k") or []] == ["apple", "banana"]


# -- exported files ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported_lite0(tmp_path_factory: pytest.TempPathFactory, lite0) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """The bundled EfficientNet-Lite0 as ONNX (dynamic batch), TorchScript, and .pt2 (static batch 2)."""
    from imgclassify.pipeline import build_net

    net, _, _ = build_net(lite0.plan)  # the same module the bundled model's backend runs
    net = net.eval().to(memory_format=torch.contiguous_format)
    root = tmp_path_factory.mktemp("exported")
    files = {"onnx": root / "lite0.onnx", "torchscript": root / "lite0.ts", "export": root / "lite0.pt2"}
    example = torch.zeros(1, 3, 224, 224)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (example,), str(files["onnx"]), input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
        )  # fmt: skip
        torch.jit.save(torch.jit.trace(net, example), str(files["torchscript"]))
        torch.export.save(torch.export.export(net, (torch.zeros(2, 3, 224, 224),)), str(files["export"]))
    return files


def _decoded(classifier, files: list[Path]):  # type: ignore[no-untyped-def]
    tensors = []
    for path in files:
        tensor, error = classifier.decoder.try_decode(path)
        assert tensor is not None, error
        tensors.append(tensor)
    return torch.stack(tensors)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "backend"), [("onnx", "onnxruntime"), ("torchscript", "torch"), ("export", "torch")])
def test_exported_lite0_agrees_with_the_bundled_model_on_the_labelled_photos(  # type: ignore[no-untyped-def]
    lite0, exported_lite0: dict[str, Path], kind: str, backend: str, record_property
) -> None:
    files = sorted(LABELLED.glob("*.JPEG"))
    assert len(files) == 50
    exported = load_classifier(str(exported_lite0[kind]), device="cpu", **LITE0_RECIPE)
    assert exported.plan.kind.value == {"onnx": "onnx", "torchscript": "torchscript", "export": "torch.export"}[kind]
    assert exported.backend_kind.value == backend and exported.num_classes == 1000
    assert exported.preprocess_config == lite0.preprocess_config  # 256 -> 224, bicubic, 0.5
    assert exported.labels == lite0.labels  # 1000 classes: ImageNet-1k
    batch_size = 7  # not a multiple of the .pt2's fixed batch of 2: every batch ends in a padded chunk
    bundled = list(lite0.predict(files, batch_size=batch_size, top_k=5))
    got = list(exported.predict(files, batch_size=batch_size, top_k=5))
    top1 = sum(a.class_id == b.class_id for a, b in zip(bundled, got, strict=True))
    top5 = sum([c.class_id for c in a.top] == [c.class_id for c in b.top] for a, b in zip(bundled, got, strict=True))
    x = _decoded(lite0, files)
    difference = float((lite0.forward_uint8(x) - exported.forward_uint8(x)).abs().max())
    print(
        f"\n{kind}: top-1 {top1}/50 identical, top-5 {top5}/50 identical, max probability difference {difference:.2e}"
    )
    record_property(f"{kind}_agreement", {"top1": top1, "top5": top5, "max_prob_diff": difference})
    assert top1 == 50 and top5 == 50
    assert difference < 1e-4
    for a, b in zip(bundled, got, strict=True):
        assert [c.probability for c in a.top] == pytest.approx([c.probability for c in b.top], abs=1e-4)


@pytest.mark.slow
def test_exported_files_by_the_cli(runner: CliRunner, exported_lite0: dict[str, Path], tmp_path: Path) -> None:
    recipe = ["--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--interpolation", "bicubic"]
    for kind, path in exported_lite0.items():
        out = tmp_path / f"{kind}.jsonl"
        result = invoke(runner, "predict", SAMPLES / "kitten.jpg", "-m", path, *recipe, "-o", out)
        assert result.exit_code == 0, result.stderr
        (row,) = records(out)
        assert row["class_name"] == "tiger_cat" and row["probability"] == pytest.approx(
            0.593772, abs=1e-4
        )  # default decoding
        manifest = manifest_of(out)
        assert manifest["model"]["kind"] == {"onnx": "onnx", "torchscript": "torchscript"}.get(kind, "torch.export")
        assert manifest["model"]["source"] == {"path": str(path)}
        assert manifest["weights"]["sha256"] == sha256(path)
        assert manifest["backend"] == ("onnxruntime" if kind == "onnx" else "torch")
        assert manifest["preprocessing"]["interpolation"] == "bicubic"
    bare = tmp_path / "bare.jsonl"  # no recipe: the ImageNet one, bilinear
    assert invoke(runner, "predict", SAMPLES / "kitten.jpg", "-m", exported_lite0["onnx"], "-o", bare).exit_code == 0
    pre = manifest_of(bare)["preprocessing"]
    assert (pre["resize"], pre["crop"], pre["interpolation"], pre["mean"][0]) == (256, 224, "bilinear", 0.485)


@pytest.fixture(scope="module")
def fixed_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 5-class timm test_resnet exported with a static 1x3x64x64 input (batch 1, 64 pixels)."""
    torch.manual_seed(2)
    model = timm.create_model(TIMM_NAME, num_classes=5).eval()
    path = tmp_path_factory.mktemp("fixed") / "fixed64.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 64, 64),), str(path), input_names=["input"], dynamo=False)
    return path


def test_fixed_size_onnx_sets_the_crop_and_runs_in_chunks(runner: CliRunner, fixed_onnx: Path, tmp_path: Path) -> None:
    photos = [*PHOTOS, str(SAMPLES / "brittany.jpg")]
    outputs = {}
    for batch in ("3", "1"):
        out = tmp_path / f"b{batch}.jsonl"
        result = invoke(runner, "predict", *photos, "-m", fixed_onnx, "-b", batch, "-k", "5", "-o", out)
        assert result.exit_code == 0, result.stderr
        outputs[batch] = records(out)
    assert outputs["3"] == outputs["1"]  # a batch of 3 ran as three chunks of the graph's 1
    assert {str(row["class_name"])[: len("class_")] for row in outputs["3"]} == {"class_"}
    manifest = manifest_of(tmp_path / "b3.jsonl")
    assert manifest["model"]["kind"] == "onnx" and manifest["backend"] == "onnxruntime"
    assert (manifest["preprocessing"]["crop"], manifest["preprocessing"]["resize"]) == (64, 73)  # 64 * 256 / 224
    backend: Any = load_classifier(str(fixed_onnx), device="cpu").backend
    assert getattr(backend, "inner", backend).fixed_batch == 1  # under the out-of-memory halving
    with_crop = load_classifier(str(fixed_onnx), device="cpu", crop=64, resize=64)
    assert with_crop.preprocess_config.resize_size == 64


def test_a_weights_file_is_not_a_model(runner: CliRunner, tiny_timm: dict[str, Path]) -> None:
    result = invoke(runner, "predict", PHOTOS[0], "-m", tiny_timm["bin"])
    assert result.exit_code == 2 and "-m ARCHITECTURE --weights FILE" in result.stderr


# -- overrides and --resume -----------------------------------------------------------------------


def test_crop_alone_keeps_the_ratio_and_overrides_apply(runner: CliRunner, tmp_path: Path) -> None:
    plan_pre = load_classifier("efficientnet_lite0", device="cpu", crop=288).preprocess_config
    assert (plan_pre.resize_size, plan_pre.crop_size) == (329, 288)  # 288 * 256 / 224 = 329.1
    options = ModelOptions(resize=300, crop=288, interpolation="nearest", mean="0.1,0.2,0.3", std=[1, 2, 3])  # type: ignore[arg-type]
    pre = options.preprocess_overrides(plan_pre)
    assert (pre.resize_size, pre.crop_size, pre.interpolation.value) == (300, 288, "nearest")
    assert pre.mean == (0.1, 0.2, 0.3) and pre.std == (1.0, 2.0, 3.0)
    out = tmp_path / "out.jsonl"
    result = invoke(runner, "predict", PHOTOS[0], "-m", "efficientnet_lite0", "--crop", "288", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert (manifest_of(out)["preprocessing"]["resize"], manifest_of(out)["preprocessing"]["crop"]) == (329, 288)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--mean", "0.5,0.5"], "--mean takes three numbers"),
        (["--mean", "a,b,c"], "--mean takes three numbers"),
        (["--std", "0.5,0,0.5"], "--std takes three positive numbers"),
        (["--resize", "100"], "--resize 100 is smaller than the crop"),
    ],
)
def test_bad_override_is_a_usage_error(runner: CliRunner, args: list[str], expected: str) -> None:
    result = invoke(runner, "predict", PHOTOS[0], "-m", "efficientnet_lite0", *args)
    assert result.exit_code == 2 and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(UsageError):
        ModelOptions(mean="1,2")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("extra", "difference"),
    [
        (["--mean", "0.4,0.4,0.4"], "mean: [0.5, 0.5, 0.5] -> [0.4, 0.4, 0.4]"),
        (["--crop", "288"], "crop: 224 -> 288"),
        (["--interpolation", "bilinear"], "interpolation: bicubic -> bilinear"),
        (["--multi-label"], "scores: softmax -> sigmoid"),
    ],
)
def test_resume_refuses_other_overrides(runner: CliRunner, tmp_path: Path, extra: list[str], difference: str) -> None:
    out = tmp_path / "out.jsonl"
    assert invoke(runner, "predict", PHOTOS[0], "-m", "efficientnet_lite0", "-o", out).exit_code == 0
    before = out.read_bytes()
    result = invoke(runner, "predict", *PHOTOS, "-m", "efficientnet_lite0", "-o", out, "--resume", *extra)
    assert result.exit_code == 2 and difference in result.stderr, result.stderr
    assert out.read_bytes() == before


def test_resume_refuses_changed_model_files(runner: CliRunner, vit_folders: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "vit"
    shutil.copytree(vit_folders["vit"], folder)
    out = tmp_path / "out.jsonl"
    assert invoke(runner, "predict", PHOTOS[0], "-m", folder, "-o", out).exit_code == 0
    before = out.read_bytes()
    same = invoke(runner, "predict", *PHOTOS, "-m", folder, "-o", out, "--resume")
    assert same.exit_code == 0, same.stderr
    before = out.read_bytes()
    config = json.loads((folder / "config.json").read_text())
    config["note"] = "edited"  # nothing the run reads changes, but the file does
    (folder / "config.json").write_text(json.dumps(config))
    result = invoke(runner, "predict", *PHOTOS, "-m", folder, "-o", out, "--resume")
    assert result.exit_code == 2 and "model files sha256" in result.stderr, result.stderr
    assert out.read_bytes() == before
    shutil.copyfile(vit_folders["vit"] / "config.json", folder / "config.json")  # as it was
    shutil.copyfile(vit_folders["multi"] / "model.safetensors", folder / "model.safetensors")  # other weights
    result = invoke(runner, "predict", *PHOTOS, "-m", folder, "-o", out, "--resume")
    assert result.exit_code == 2 and "weights sha256" in result.stderr, result.stderr


def test_resume_refuses_other_timm_weights(runner: CliRunner, tiny_timm: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    timm_args = ["-m", f"timm:{TIMM_NAME}", "-o", out]
    assert invoke(runner, "predict", PHOTOS[0], *timm_args, "--weights", tiny_timm["safetensors"]).exit_code == 0
    result = invoke(runner, "predict", *PHOTOS, *timm_args, "--weights", tiny_timm["pth"], "--resume")
    assert result.exit_code == 2 and "weights sha256" in result.stderr, result.stderr


# -- serve ------------------------------------------------------------------------------------------


def test_serve_answers_with_the_models_labels(vit) -> None:  # type: ignore[no-untyped-def]
    import io

    from imgclassify.server.app import ServerConfig, create_app

    application = create_app(ServerConfig(max_batch_delay_ms=2), classifier=vit, warm_up_async=False)
    application.testing = True
    client = application.test_client()
    upload = {"file": [(io.BytesIO((SAMPLES / "kitten.jpg").read_bytes()), "kitten.jpg")]}
    response = client.post("/predict?top_k=3", data=upload, content_type="multipart/form-data")
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["class_name"] in VIT_LABELS and sorted(c["class_name"] for c in body["top_k"]) == VIT_LABELS
    expected = vit.predict_file(SAMPLES / "kitten.jpg")
    assert (body["class_name"], body["probability"]) == (expected.class_name, expected.probability)
    info = client.get("/info").get_json()
    assert info["model"]["kind"] == "transformers" and info["labels"]["source"] == "model"
    assert info["preprocessing"]["crop"] == 64
