"""Exported model files: ONNX (``.onnx``), TorchScript archives and ``torch.export`` programs (``.pt2``).

Such a file carries no preprocessing and no labels: the ImageNet recipe is the default (shorter
side 256, center crop 224, bilinear, ImageNet mean and std) and ``--resize``, ``--crop``,
``--interpolation``, ``--mean``, ``--std``, ``--labels`` say otherwise. When an ONNX graph fixes
its input size, the crop follows it; a TorchScript or exported program made for another size
than 224 needs ``--crop N`` (its load check says so). A file that fixes its batch size is run in
chunks of that size, the last one padded. TorchScript and exported programs run on the torch
backend; ONNX files on ONNX Runtime (``--backend onnxruntime``, the default for them).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclassify.errors import CheckpointError, UnknownModelError, UsageError
from imgclassify.models.kinds.base import LoadedModel, ModelKind, ModelRef, Resolved, WeightsSource

if TYPE_CHECKING:
    from imgclassify.models.plan import ModelPlan
    from imgclassify.options import ModelOptions

_FAMILIES = {ModelKind.ONNX: "onnx", ModelKind.TORCHSCRIPT: "torchscript", ModelKind.EXPORT: "torch.export"}


def file_kind(path: Path) -> ModelKind | None:
    """What an exported file is, from its suffix or its archive's layout (None: not a model file)."""
    if path.suffix.lower() == ".onnx":
        return ModelKind.ONNX
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(name.endswith("/models/model.json") or name.endswith("serialized_exported_program.json") for name in names):
        return ModelKind.EXPORT
    if any("/code/__torch__" in name for name in names):
        return ModelKind.TORCHSCRIPT
    return None


def resolve_file(ref: ModelRef, path: Path, options: ModelOptions) -> Resolved:
    from imgclassify.decode.preprocess import IMAGENET_MEAN, IMAGENET_STD, Interpolation, PreprocessConfig
    from imgclassify.models.registry import ModelSpec

    kind = file_kind(path)
    if kind is None:
        raise UnknownModelError(
            f"--model {ref.text}: {path} is not a model file (ONNX, TorchScript or torch.export .pt2); a "
            "checkpoint of weights goes with its architecture: -m ARCHITECTURE --weights FILE"
        )
    size = _fixed_size(path, kind)
    crop = size or 224
    preprocess = PreprocessConfig(round(crop * 256 / 224), crop, Interpolation.BILINEAR, IMAGENET_MEAN, IMAGENET_STD)
    spec = ModelSpec(
        name=path.name, family=_FAMILIES[kind], architecture=path.stem, num_params=0, num_classes=0,
        preprocess=preprocess,
    )  # fmt: skip
    return Resolved(
        kind=kind, spec=spec, weights_path=path, weights_source=WeightsSource.FILE, source={"path": str(path)},
        extra={"input_size": size},
    )  # fmt: skip


def _fixed_size(path: Path, kind: ModelKind) -> int | None:
    """The square input size the file fixes, if it does (ONNX only: read without running it)."""
    if kind is not ModelKind.ONNX:
        return None
    try:
        import onnx
    except ImportError:
        return None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise CheckpointError(f"cannot read {path} as an ONNX model: {exc}") from None
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise CheckpointError(f"{path}: an image classifier takes one input; this ONNX graph takes {len(inputs)}")
    dims = inputs[0].type.tensor_type.shape.dim
    values = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(values) != 4 or values[1] not in (3, None):
        raise CheckpointError(f"{path}: the ONNX input should be a batch of RGB images (N, 3, H, W), got {values}")
    h, w = values[2], values[3]
    return h if h is not None and h == w else None


def onnx_class_count(path: Path) -> int:
    """The class count of an ONNX classifier: its first output's second dimension."""
    try:
        import onnxruntime
    except ImportError:
        from imgclassify.extras import install_hint

        raise UsageError(f"running an ONNX model needs ONNX Runtime (the onnx extra): {install_hint('onnx')}") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CheckpointError(f"ONNX Runtime cannot load {path}: {' '.join(str(exc).split())[:300]}") from None
    shape = session.get_outputs()[0].shape
    if len(shape) != 2 or not isinstance(shape[1], int):
        raise CheckpointError(f"{path}: the first output has shape {shape}, not (batch, classes): not a classifier")
    return int(shape[1])


def load(plan: ModelPlan) -> LoadedModel:
    if plan.kind is ModelKind.ONNX:
        return LoadedModel(num_classes=onnx_class_count(plan.weights_path), onnx_file=plan.weights_path)
    import torch

    path, crop = plan.weights_path, plan.preprocess.crop_size
    try:
        if plan.kind is ModelKind.TORCHSCRIPT:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's note that TorchScript is deprecated
                module: Any = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
            batch = None
        else:
            program = torch.export.load(str(path))
            module, batch = program.module(), _static_batch(program)
    except Exception as exc:
        raise CheckpointError(f"cannot load {path} as a {_FAMILIES[plan.kind]} model: {exc}") from None
    from imgclassify.models.kinds.exported_module import ExportedModule

    net = ExportedModule(module, batch, fixed_mode=plan.kind is ModelKind.EXPORT)
    try:
        with torch.inference_mode():
            out = net(torch.zeros(batch or 1, 3, crop, crop))
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(
            f"{path} does not run on a {crop}x{crop} image ({detail}); give its input size with --crop N"
        ) from None
    if out.ndim != 2:
        raise CheckpointError(f"{path} returns shape {tuple(out.shape)}, not (batch, classes): not a classifier")
    return LoadedModel(num_classes=int(out.shape[1]), net=net)


def _static_batch(program: Any) -> int | None:
    """The batch size an exported program was specialized to (None: a dynamic batch dimension)."""
    import torch

    user_inputs = [spec.arg.name for spec in program.graph_signature.input_specs if spec.kind.name == "USER_INPUT"]
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            value = node.meta.get("val")
            if value is not None and isinstance(value.shape[0], int) and not isinstance(value.shape[0], torch.SymInt):
                return int(value.shape[0])
    return None
