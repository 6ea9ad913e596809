"""The types every model kind shares: kinds, references, what resolving and loading give."""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclassify.errors import UnknownModelError

if TYPE_CHECKING:
    from torch import nn

    from imgclassify.models.labels import LabelSet
    from imgclassify.models.registry import ModelSpec


class ModelKind(str, enum.Enum):
    """How a model is built, as the manifest records it (``model.kind``)."""

    #: a registry name: torchvision's architectures and the bundled EfficientNet-Lite0
    REGISTRY = "registry"
    #: timm: ``timm:NAME``, or a folder or Hub repository in timm's layout
    TIMM = "timm"
    #: a folder or Hub repository in transformers' image-classification layout
    TRANSFORMERS = "transformers"
    #: an ``.onnx`` file, run by ONNX Runtime (or OpenVINO)
    ONNX = "onnx"
    #: a TorchScript archive (``torch.jit.save``)
    TORCHSCRIPT = "torchscript"
    #: a ``torch.export`` program (``torch.export.save``, ``.pt2``)
    EXPORT = "torch.export"
    #: a folder written by ``imgclassify fit``: a backbone's features and a head fitted on examples
    FITTED = "fitted"


class WeightsSource(str, enum.Enum):
    BUNDLED = "bundled"  # a Python package that ships the file (efficientnet_lite0)
    CACHE = "cache"  # the torch hub cache, or the Hugging Face Hub cache (downloaded once, or placed there)
    FILE = "file"  # --weights FILE, or the model file itself (a folder's weights, an exported file)


@dataclass(frozen=True)
class ModelRef:
    """``--model`` as written, parsed."""

    text: str
    #: "registry", "timm", "hf" or "path"
    scheme: str
    #: the registry name, timm name, Hub repository or path
    target: str
    revision: str | None = None


_HF = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def parse_reference(text: str) -> ModelRef:
    """Which kind of reference ``text`` is (no file is read beyond ``stat``)."""
    stripped = text.strip()
    if stripped.startswith("timm:"):
        name = stripped[len("timm:") :].strip()
        if not name:
            raise UnknownModelError("--model timm: needs a model name, such as timm:resnet50.a1_in1k")
        return ModelRef(text, "timm", name)
    if stripped.startswith(("hf:", "hf-hub:")):
        repo = stripped.split(":", 1)[1].strip()
        repo, _, revision = repo.partition("@")
        if not _HF.match(repo):
            raise UnknownModelError(
                f"--model {text}: a Hugging Face repository is ORG/NAME, such as hf:timm/resnet18.a1_in1k"
            )
        return ModelRef(text, "hf", repo, revision or None)
    if os.sep not in stripped and _registered(stripped):  # registry names keep their meaning
        return ModelRef(text, "registry", stripped)
    path = Path(os.path.expanduser(stripped))
    if path.exists() or os.sep in stripped or stripped.endswith((".onnx", ".pt2", ".pt", ".ts", ".jit")):
        return ModelRef(text, "path", str(path))
    return ModelRef(text, "registry", stripped)


def _registered(name: str) -> bool:
    from imgclassify.models.registry import registry

    return name.lower().replace("-", "_") in registry()


@dataclass(frozen=True)
class Resolved:
    """What a kind found for ``--model``, before anything is built."""

    kind: ModelKind
    spec: ModelSpec
    #: the file the weights are read from (an exported file: the model itself)
    weights_path: Path
    weights_source: WeightsSource
    #: where it came from, for the manifest: {"repo", "revision", "path", "name"}
    source: dict[str, Any] = field(default_factory=dict)
    #: every other file the model is loaded from (config.json, preprocessor_config.json)
    files: tuple[Path, ...] = ()
    #: the model's own class names (None: the class count decides)
    model_labels: LabelSet | None = None
    #: a multi-label head (sigmoid scores): transformers' problem_type, timm's config
    multi_label: bool = False
    #: kind-specific facts load() needs (a timm architecture's model_args, say); must pickle
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedModel:
    """A built model: a torch module (any torch backend runs it) or an ONNX file, and its class count."""

    num_classes: int
    net: nn.Module | None = None
    onnx_file: Path | None = None


def weights_file_in(folder: Path) -> Path | None:
    """The weights of a model folder: ``model.safetensors``, else ``pytorch_model.bin``."""
    for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None
