"""Fitted models: a folder ``imgclassify fit`` wrote, run as backbone features + a head, one class per category.

The folder holds ``imgclassify_head.json`` (its marker: the categories, the backbone's reference
and its weights' sha256, the head's kind and file, the preprocessing, the threshold measured by
cross-validation), ``head.safetensors`` (``weight`` [rows, features], ``members`` [rows],
``bias`` [categories], ``center`` [features]: see :class:`~imgclassify.models.features.FittedNet`) and ``fit_manifest.json`` (the examples it was fitted on, with their sha256, and the
cross-validation). Resolving plans the backbone (any ``--model`` reference: the bundled
EfficientNet-Lite0 by default) and refuses weights other than those the head was fitted on; the
net is :class:`~imgclassify.models.features.FittedNet`, so every backend, engine and the server
run it as any classifier, with the category names as labels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclassify.errors import CheckpointError, UnknownModelError, UsageError
from imgclassify.models.kinds.base import LoadedModel, ModelKind, ModelRef, Resolved, WeightsSource

if TYPE_CHECKING:
    from imgclassify.decode.preprocess import PreprocessConfig
    from imgclassify.models.plan import ModelPlan
    from imgclassify.options import ModelOptions

#: the marker file of a fitted model folder (its configuration)
CONFIG_NAME = "imgclassify_head.json"
#: the head's tensors
HEAD_NAME = "head.safetensors"
#: the fit's own manifest: examples and their sha256, cross-validation, timings
FIT_MANIFEST_NAME = "fit_manifest.json"
#: the version of the folder's layout this code reads and writes
HEAD_FORMAT = 1


def preprocess_to_dict(pre: PreprocessConfig) -> dict[str, Any]:
    return {
        "resize": pre.resize_size, "crop": pre.crop_size, "interpolation": pre.interpolation.value,
        "mean": list(pre.mean), "std": list(pre.std),
    }  # fmt: skip


def preprocess_from_dict(data: dict[str, Any]) -> PreprocessConfig:
    from imgclassify.decode.preprocess import Interpolation, PreprocessConfig

    return PreprocessConfig(
        resize_size=int(data["resize"]),
        crop_size=int(data["crop"]),
        interpolation=Interpolation(data["interpolation"]),
        mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
    )


def read_config(folder: Path, what: str) -> dict[str, Any]:
    """``imgclassify_head.json``, checked for the keys the loader needs."""
    path = folder / CONFIG_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnknownModelError(f"{what}: cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or "imgclassify_head" not in data:
        raise UnknownModelError(f"{what}: {path} is not a fitted model's configuration")
    if data["imgclassify_head"] != HEAD_FORMAT:
        raise UnknownModelError(
            f"{what}: {path} is in fitted-model format {data['imgclassify_head']}; this imgclassify reads "
            f"format {HEAD_FORMAT}: fit it again with this version"
        )
    try:
        categories = [str(c) for c in data["categories"]]
        for section, key in (
            ("backbone", "model"),
            ("backbone", "weights_sha256"),
            ("head", "file"),
            ("head", "scale"),
        ):
            data[section][key]
        float(data["head"]["power"])
        preprocess_from_dict(data["preprocessing"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UnknownModelError(f"{what}: {path} lacks {exc}: fit the folder again") from None
    if len(categories) < 2:
        raise UnknownModelError(f"{what}: {path} has fewer than two categories")
    return data


def resolve_folder(ref: ModelRef, folder: Path, options: ModelOptions, *, source: dict[str, Any]) -> Resolved:
    from imgclassify.models.labels import Label, LabelSet, LabelsSource
    from imgclassify.models.plan import plan_model
    from imgclassify.models.registry import ModelSpec

    what = f"--model {ref.text}"
    config = read_config(folder, what)
    if options.weights is not None:
        raise UsageError(f"{what} is a fitted model: its head is {folder / HEAD_NAME}; --weights does not apply")
    backbone_ref = str(config["backbone"]["model"])
    backbone = plan_model(
        options.replace(
            model=backbone_ref, weights=None, labels=None, resize=None, crop=None, interpolation=None, mean=None,
            std=None, multi_label=None,
        )
    )  # fmt: skip
    expected = str(config["backbone"]["weights_sha256"])
    if backbone.weights_sha256 != expected:
        raise CheckpointError(
            f"{what}: its head was fitted on {backbone_ref} with weights of sha256 {expected[:12]}…, but "
            f"{backbone.weights_path} has sha256 {backbone.weights_sha256[:12]}…: fit it again on these weights "
            "(imgclassify fit), or give the backbone it was fitted on"
        )
    head = folder / str(config["head"]["file"])
    if not head.is_file():
        raise CheckpointError(f"{what}: {head} is missing")
    categories = tuple(str(c) for c in config["categories"])
    spec = ModelSpec(
        name=ref.text, family="fitted", architecture=f"{backbone.spec.architecture}+{config['head'].get('type', 'head')}",
        num_params=0, num_classes=len(categories), preprocess=preprocess_from_dict(config["preprocessing"]),
    )  # fmt: skip
    return Resolved(
        kind=ModelKind.FITTED, spec=spec, weights_path=head, weights_source=WeightsSource.FILE,
        source={**source, "backbone": backbone_ref}, files=(folder / CONFIG_NAME, backbone.weights_path, *backbone.files),
        model_labels=LabelSet(tuple(Label(None, c) for c in categories), LabelsSource.MODEL, folder / CONFIG_NAME),
        extra={"backbone": backbone, "head": dict(config["head"]), "threshold": config.get("threshold")},
    )  # fmt: skip


def load(plan: ModelPlan) -> LoadedModel:
    from imgclassify.models.features import FittedNet, load_features
    from imgclassify.models.weights import read_state_dict

    state = read_state_dict(plan.weights_path)
    head = plan.extra["head"]
    try:
        weight, members, bias, center = state["weight"], state["members"], state["bias"], state["center"]
        scale, power = float(head["scale"]), float(head["power"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{plan.weights_path}: the head lacks {exc}: fit the folder again") from None
    categories = plan.spec.num_classes
    rows = int(weight.shape[0]) if weight.ndim == 2 else -1
    if (
        rows < 1 or bias.shape != (categories,) or members.shape != (rows,) or center.shape != weight.shape[1:]
        or int(members.min()) < 0 or int(members.max()) >= categories
    ):  # fmt: skip
        raise CheckpointError(
            f"{plan.weights_path}: head tensors of shapes {tuple(weight.shape)}, {tuple(members.shape)}, "
            f"{tuple(bias.shape)}, {tuple(center.shape)} do not fit {categories} categories: fit the folder again"
        )
    backbone = load_features(plan.extra["backbone"])
    net = FittedNet(backbone, weight=weight, members=members, bias=bias, center=center, scale=scale, power=power)
    return LoadedModel(num_classes=categories, net=net.eval())
