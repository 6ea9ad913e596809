"""DenseNet-121 without internet, checkpoint loading, labels, the registry."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from conftest import DENSENET_FILE, SAMPLES
from imgclassify import load_classifier
from imgclassify.decode.imaging import DecodeMode, DecodeOptions
from imgclassify.errors import CheckpointError, LabelsError, UnknownModelError, WeightsUnavailableError
from imgclassify.models.labels import load_labels
from imgclassify.models.registry import WeightsStatus, get_spec, registry
from imgclassify.models.weights import read_state_dict


def reference_probs(model: torch.nn.Module, path: Path) -> torch.Tensor:
    """The tutorial's pipeline with torchvision's DenseNet metadata (resize 256)."""
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose(
        [T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    )
    with torch.inference_mode():
        return torch.softmax(model.eval()(tf(Image.open(path).convert("RGB"))[None]), 1)[0]


def test_densenet_from_weights_file_matches_torchvision_pipeline(densenet_weights: Path) -> None:
    import torchvision

    # --exact-decode: kitten.jpg (720x720) is decoded at full size, as torchvision's pipeline sees it
    clf = load_classifier("densenet121", weights=densenet_weights, device="cpu", decode=DecodeOptions(DecodeMode.EXACT))
    assert clf.name == "densenet121" and clf.num_classes == 1000
    pred = clf.predict_file(SAMPLES / "kitten.jpg", top_k=5)
    model = torchvision.models.densenet121(weights=None)
    model.load_state_dict(torch.load(densenet_weights, weights_only=True))
    ref = reference_probs(model, SAMPLES / "kitten.jpg")
    assert pred.class_id == int(ref.argmax())
    for cand in pred.top:
        assert cand.probability == pytest.approx(float(ref[cand.class_id]), abs=1e-5)


def test_densenet_from_hub_cache_is_the_default(cached_densenet: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert get_spec("densenet121").weights_status() is WeightsStatus.CACHED
    clf = load_classifier(device="cpu")
    assert clf.name == "densenet121"
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "warning")]


def test_densenet_original_key_layout_is_accepted(densenet_weights: Path, tmp_path: Path) -> None:
    """torchvision's published densenet121 file uses old keys like ``norm.1.weight``."""
    state = torch.load(densenet_weights, weights_only=True)
    old = {
        k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2.") if "denselayer" in k else k: v
        for k, v in state.items()
    }
    assert any(".norm.1." in k for k in old)
    torch.save(old, tmp_path / "old.pth")
    clf = load_classifier("densenet121", weights=tmp_path / "old.pth", device="cpu")
    ref = load_classifier("densenet121", weights=densenet_weights, device="cpu")
    assert clf.predict_file(SAMPLES / "dog.jpg").top == ref.predict_file(SAMPLES / "dog.jpg").top


def test_default_falls_back_offline_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    clf = load_classifier(device="cpu")
    assert clf.name == "efficientnet_lite0"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= 30]
    assert len(warnings) == 1
    assert warnings == [
        "no densenet121 weights (not cached, downloads off): using the bundled efficientnet_lite0; "
        "-m efficientnet_lite0 silences this"
    ]


def test_failed_download_falls_back_too(monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    import imgclassify.models.weights as weights

    calls = []

    def no_network(url: str, dest: Path, **_: object) -> None:
        calls.append(url)
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.delenv("IMGCLASSIFY_OFFLINE")
    monkeypatch.setattr(weights, "download", no_network)
    assert load_classifier(device="cpu").name == "efficientnet_lite0"
    assert calls == ["https://download.pytorch.org/models/" + DENSENET_FILE]
    with pytest.raises(WeightsUnavailableError, match="download failed"):
        load_classifier("densenet121", device="cpu")


def test_explicit_model_never_falls_back(offline_empty_cache: Path) -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        load_classifier("densenet121", device="cpu")
    message = str(info.value)
    assert "--weights FILE" in message and "--model efficientnet_lite0" in message
    assert str(offline_empty_cache / "hub" / "checkpoints" / DENSENET_FILE) in message


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module_prefix"])
def test_checkpoint_wrappers(densenet_weights: Path, tmp_path: Path, wrap: str) -> None:
    state = torch.load(densenet_weights, weights_only=True)
    obj: object = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state, "optimizer": {}},
        "module_prefix": {f"module.{k}": v for k, v in state.items()},
    }[wrap]
    torch.save(obj, tmp_path / "w.pth")
    loaded = read_state_dict(tmp_path / "w.pth")
    assert loaded.keys() == state.keys()


def test_malicious_pickle_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            import os

            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"state_dict": Evil()}))
    with pytest.raises(CheckpointError, match="safe PyTorch checkpoint"):
        read_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


def test_checkpoint_of_another_architecture_is_a_clear_error(densenet_weights: Path) -> None:
    with pytest.raises(CheckpointError, match="do not fit resnet18"):
        load_classifier("resnet18", weights=densenet_weights, device="cpu")


def test_custom_class_count_and_labels(tmp_path: Path) -> None:
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=3)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "three.pth")
    (tmp_path / "labels.json").write_text(json.dumps(["cat", "dog", "bird"]))
    clf = load_classifier("resnet18", weights=tmp_path / "three.pth", labels=tmp_path / "labels.json", device="cpu")
    assert clf.num_classes == 3
    pred = clf.predict_file(SAMPLES / "dog.jpg", top_k=3)
    assert sorted(c.class_name for c in pred.top) == ["bird", "cat", "dog"]
    assert sum(c.probability for c in pred.top) == pytest.approx(1.0, abs=1e-5)
    unlabelled = load_classifier("resnet18", weights=tmp_path / "three.pth", device="cpu")
    assert unlabelled.labels[2].name == "class_2" and unlabelled.labels[2].wnid is None
    (tmp_path / "five.json").write_text(json.dumps({str(i): f"c{i}" for i in range(5)}))
    with pytest.raises(LabelsError, match="has 5 labels but the model has 3 classes"):
        load_classifier("resnet18", weights=tmp_path / "three.pth", labels=tmp_path / "five.json", device="cpu")


def test_label_file_formats(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"0": ["n1", "tench"], "1": ["n2", "goldfish"]}))
    (tmp_path / "b.json").write_text(json.dumps({"1": "goldfish", "0": "tench"}))
    (tmp_path / "c.json").write_text(json.dumps(["tench", "goldfish"]))
    assert [(x.wnid, x.name) for x in load_labels(tmp_path / "a.json")] == [("n1", "tench"), ("n2", "goldfish")]
    assert [x.name for x in load_labels(tmp_path / "b.json")] == ["tench", "goldfish"]
    assert [x.name for x in load_labels(tmp_path / "c.json")] == ["tench", "goldfish"]
    for bad, message in [("{", "not valid JSON"), ('{"0": "a", "2": "b"}', "no gaps"), ('{"x": "a"}', "class indices"),
                         ("[1, 2]", "name or a"), ("42", "expected a JSON object"), ("[]", "no labels")]:  # fmt: skip
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(LabelsError, match=message):
            load_labels(tmp_path / "bad.json")


def test_unknown_model_suggests() -> None:
    with pytest.raises(UnknownModelError, match=r"Did you mean: .*resnet50"):
        get_spec("resnet5")


def test_registry_matches_installed_torchvision() -> None:
    """The static table (for a torch-free `models` command) must not drift from torchvision."""
    import torchvision
    from torchvision import models

    names = set(models.list_models(module=models))
    specs = registry()
    assert names | {"efficientnet_lite0"} == set(specs)
    for name in ["densenet121", "resnet50", "vit_b_16", "efficientnet_b0", "mobilenet_v3_large"]:
        weights = models.get_model_weights(name).DEFAULT
        spec = specs[name]
        keywords = weights.transforms.keywords
        assert spec.weights_url == weights.url
        assert spec.preprocess.crop_size == keywords["crop_size"]
        assert spec.preprocess.resize_size == keywords.get("resize_size", 256)
        assert spec.num_params == weights.meta["num_params"]
    assert torchvision.__version__.startswith("0.")
    densenet = specs["densenet121"].preprocess
    assert (densenet.resize_size, densenet.crop_size, densenet.interpolation.value) == (256, 224, "bilinear")
