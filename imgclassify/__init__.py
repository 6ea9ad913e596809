"""imgclassify: batch image classification with PyTorch models.

    >>> from imgclassify import load_classifier
    >>> clf = load_classifier("efficientnet_lite0", device="cpu")
    >>> for p in clf.predict(["samples/kitten.jpg"], top_k=3):
    ...     print(p.path, p.class_id, p.class_name, p.probability)

Importing the package is cheap: torch loads on first use of the classifier API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imgclassify.errors import (
    CheckpointError,
    DeviceError,
    ImageError,
    ImgclassifyError,
    LabelsError,
    ModelError,
    NoImagesError,
    UnknownModelError,
    UsageError,
    WeightsUnavailableError,
)
from imgclassify.results.records import Candidate, Prediction

__version__ = "0.1.0"

if TYPE_CHECKING:
    from imgclassify.decode.imaging import DecodeMode, DecodeOptions
    from imgclassify.options import ModelOptions
    from imgclassify.pipeline import Classifier, load_classifier

_LAZY = {
    "Classifier": "pipeline",
    "load_classifier": "pipeline",
    "expand_inputs": "run.inputs",
    "registry": "models.registry",
    "DecodeMode": "decode.imaging",
    "DecodeOptions": "decode.imaging",
    "ModelOptions": "options",
}

__all__ = [
    "Candidate",
    "CheckpointError",
    "Classifier",
    "DecodeMode",
    "DecodeOptions",
    "DeviceError",
    "ImageError",
    "ImgclassifyError",
    "LabelsError",
    "ModelError",
    "ModelOptions",
    "NoImagesError",
    "Prediction",
    "UnknownModelError",
    "UsageError",
    "WeightsUnavailableError",
    "__version__",
    "expand_inputs",
    "load_classifier",
    "registry",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
