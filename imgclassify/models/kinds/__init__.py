"""Model kinds: what ``--model`` can name, and how each kind is found and built.

``--model`` takes a registry name (``densenet121``, ``efficientnet_lite0``: ``imgclassify
models``), ``timm:NAME[.TAG]`` (any model timm can create), ``hf:ORG/REPO[@REVISION]`` (a Hugging
Face Hub repository in timm's or transformers' format), or a local path: a folder in either of
those layouts or the one ``imgclassify fit`` writes, an ``.onnx`` file, a TorchScript archive or a
``torch.export`` program (``.pt2``).
:func:`parse_reference` tells which; each kind is one module of this package with two functions,
listed in :data:`KINDS`:

- ``resolve(ref, options, progress) -> Resolved``: find the files (downloads only when allowed)
  and read the model's own configuration: preprocessing, class count, label names, multi-label;
  no model is built (timm or transformers may be imported, for their configuration).
- ``load(plan) -> LoadedModel``: build the model (imports torch).

Registry names are planned by :mod:`imgclassify.models.plan` as before. Adding a kind is one
module and one row.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclassify.errors import UnknownModelError
from imgclassify.models.kinds.base import (
    LoadedModel,
    ModelKind,
    ModelRef,
    Resolved,
    WeightsSource,
    parse_reference,
    weights_file_in,
)

if TYPE_CHECKING:
    from imgclassify.models.plan import ModelPlan
    from imgclassify.options import ModelOptions


#: kind -> its module (``resolve`` and ``load``)
KINDS: dict[ModelKind, str] = {
    ModelKind.TIMM: "imgclassify.models.kinds.timm_models",
    ModelKind.TRANSFORMERS: "imgclassify.models.kinds.transformers_models",
    ModelKind.ONNX: "imgclassify.models.kinds.exported",
    ModelKind.TORCHSCRIPT: "imgclassify.models.kinds.exported",
    ModelKind.EXPORT: "imgclassify.models.kinds.exported",
    ModelKind.FITTED: "imgclassify.models.kinds.fitted",
}


def _module(kind: ModelKind) -> Any:
    return importlib.import_module(KINDS[kind])


def _module_named(name: str) -> Any:
    """A submodule, imported when needed (they import :mod:`.base`, never this package)."""
    return importlib.import_module(f"{__name__}.{name}")


def resolve(ref: ModelRef, options: ModelOptions, *, progress: bool = False) -> Resolved:
    """The files and configuration for a reference that is not a registry name."""
    if ref.scheme == "timm":
        resolved: Resolved = _module(ModelKind.TIMM).resolve(ref, options, progress=progress)
        return resolved
    if ref.scheme == "hf":
        folder: Path = _module_named("hub").snapshot(ref, options, progress=progress)
        source = {"repo": ref.target, "revision": ref.revision, "commit": folder.name}  # snapshots/<commit>
        return resolve_folder(ref, folder, options, source=source)
    path = Path(ref.target)
    if not path.exists():
        raise UnknownModelError(
            f"--model {ref.text}: no such file or folder; give a registry name (imgclassify models), "
            "timm:NAME, hf:ORG/REPO, or the path of a model folder, .onnx, TorchScript or .pt2 file"
        )
    if path.is_dir():
        return resolve_folder(ref, path, options, source={"path": str(path)})
    found: Resolved = _module_named("exported").resolve_file(ref, path, options)
    return found


def resolve_folder(ref: ModelRef, folder: Path, options: ModelOptions, *, source: dict[str, Any]) -> Resolved:
    """A folder in timm's layout (config.json with ``architecture``) or transformers' (``architectures``),
    or one ``imgclassify fit`` wrote (``imgclassify_head.json``)."""
    import json

    fitted = _module(ModelKind.FITTED)
    if (folder / fitted.CONFIG_NAME).is_file():
        found: Resolved = fitted.resolve_folder(ref, folder, options, source=source)
        return found

    config = folder / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnknownModelError(
            f"--model {ref.text}: {folder} has no config.json; a model folder holds config.json and "
            "model.safetensors (timm's push_to_hf_hub or transformers' save_pretrained write them)"
        ) from None
    except (OSError, ValueError) as exc:
        raise UnknownModelError(f"--model {ref.text}: cannot read {config}: {exc}") from None
    if not isinstance(data, dict):
        raise UnknownModelError(f"--model {ref.text}: {config} is not a JSON object")
    if "architecture" in data and "architectures" not in data:
        kind = ModelKind.TIMM
    elif "architectures" in data or "model_type" in data:
        kind = ModelKind.TRANSFORMERS
    else:
        raise UnknownModelError(
            f"--model {ref.text}: {config} is in neither timm's layout ('architecture') nor transformers' "
            "('architectures', 'model_type')"
        )
    resolved: Resolved = _module(kind).resolve_folder(ref, folder, data, options, source=source)
    return resolved


def load(plan: ModelPlan) -> LoadedModel:
    """Build the model of a plan whose kind is not the registry."""
    loaded: LoadedModel = _module(plan.kind).load(plan)
    return loaded


__all__ = [
    "KINDS", "LoadedModel", "ModelKind", "ModelRef", "Resolved", "WeightsSource", "load", "parse_reference",
    "resolve", "resolve_folder", "weights_file_in",
]  # fmt: skip
