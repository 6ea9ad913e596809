"""transformers image classifiers: a folder written by ``save_pretrained`` (or a Hub repository).

``config.json`` gives the class names (``id2label``), the class count and whether the head is
multi-label (``problem_type: multi_label_classification``); ``preprocessor_config.json`` the
preprocessing (``size``, ``crop_size``/``crop_pct``, ``resample``, ``image_mean``, ``image_std``).
A processor that resizes to a fixed height and width (ViT's ``{"height": 224, "width": 224}``) is
run as shorter side to that size, then a center crop: the aspect ratio is kept rather than
squashed (a documented difference). The model is built by ``AutoModelForImageClassification``
from the local files only; code from a repository is never run (``trust_remote_code`` stays off).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclassify.errors import CheckpointError, UnknownModelError, UsageError
from imgclassify.extras import install_hint
from imgclassify.models.kinds.base import LoadedModel, ModelKind, ModelRef, Resolved, WeightsSource, weights_file_in

if TYPE_CHECKING:
    from imgclassify.models.plan import ModelPlan
    from imgclassify.options import ModelOptions

#: PIL's resampling codes, as transformers' processors store them
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def preprocess_from_processor(data: dict[str, Any]) -> Any:
    from imgclassify.decode.preprocess import IMAGENET_MEAN, IMAGENET_STD, Interpolation, PreprocessConfig

    size = data.get("size", 224)
    crop_size = data.get("crop_size")
    crop_pct = data.get("crop_pct")
    if isinstance(size, dict):
        edge = size.get("shortest_edge") or size.get("height") or size.get("width") or 224
    else:
        edge = int(size)
    if isinstance(crop_size, dict):
        crop_size = crop_size.get("height") or crop_size.get("width")
    if crop_pct and not (isinstance(size, dict) and "height" in size):  # ConvNeXt: shorter side to edge / crop_pct
        resize, crop = math.floor(int(edge) / float(crop_pct)), int(edge)
    elif data.get("do_center_crop") and crop_size:
        resize, crop = int(edge), int(crop_size)
    else:
        resize = crop = int(edge)
    if data.get("do_normalize", True):
        mean = tuple(float(v) for v in data.get("image_mean") or IMAGENET_MEAN)
        std = tuple(float(v) for v in data.get("image_std") or IMAGENET_STD)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return PreprocessConfig(
        resize_size=resize, crop_size=crop,
        interpolation=Interpolation(_RESAMPLE.get(int(data.get("resample", 2)), "bicubic")),
        mean=mean, std=std,  # type: ignore[arg-type]
    )  # fmt: skip


def resolve_folder(
    ref: ModelRef, folder: Path, config: dict[str, Any], options: ModelOptions, *, source: dict[str, Any]
) -> Resolved:
    from imgclassify.models.labels import Label, LabelSet, LabelsSource
    from imgclassify.models.registry import ModelSpec

    id2label = config.get("id2label") or {}
    try:
        names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    except (TypeError, ValueError):
        raise UnknownModelError(f"--model {ref.text}: config.json's id2label keys are not class indices") from None
    num_classes = len(names) or int(config.get("num_labels") or 0)
    processor = folder / "preprocessor_config.json"
    files = [folder / "config.json"]
    if processor.is_file():
        files.append(processor)
        processor_data = json.loads(processor.read_text(encoding="utf-8"))
    else:
        processor_data = {}
    weights = options.weights or weights_file_in(folder)
    if weights is None:
        raise CheckpointError(f"--model {ref.text}: {folder} has no model.safetensors or pytorch_model.bin")
    architectures = config.get("architectures") or [config.get("model_type", "unknown")]
    spec = ModelSpec(
        name=ref.text, family="transformers", architecture=str(architectures[0]), num_params=0,
        num_classes=num_classes, preprocess=preprocess_from_processor(processor_data),
    )  # fmt: skip
    generic = all(name == f"LABEL_{i}" for i, name in enumerate(names))  # transformers' placeholders
    labels = (
        None
        if generic or not names
        else LabelSet(tuple(Label(None, n) for n in names), LabelsSource.MODEL, folder / "config.json")
    )
    return Resolved(
        kind=ModelKind.TRANSFORMERS, spec=spec, weights_path=Path(weights), weights_source=WeightsSource.FILE,
        source=source, files=tuple(files), model_labels=labels,
        multi_label=config.get("problem_type") == "multi_label_classification", extra={"folder": str(folder)},
    )  # fmt: skip


def load(plan: ModelPlan) -> LoadedModel:
    try:
        import transformers
    except ImportError:
        raise UsageError(f"transformers models need transformers (the hf extra): {install_hint('hf')}") from None
    from imgclassify.models.kinds.exported_module import ExportedModule

    folder = plan.extra["folder"]
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # not for our stderr
    transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(
            folder, local_files_only=True, trust_remote_code=False
        )
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"transformers cannot build {plan.spec.name}: {detail}") from None
    if plan.options.weights is not None:
        from imgclassify.models.weights import read_state_dict

        try:
            model.load_state_dict(read_state_dict(plan.options.weights), strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{plan.options.weights} does not fit {plan.spec.name}: {str(exc)[:300]}") from None
    model.eval()
    return LoadedModel(num_classes=int(model.config.num_labels), net=ExportedModule(model, None))
