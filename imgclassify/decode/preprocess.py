"""The preprocessing recipe a model is given with: shorter side resized, center crop, normalize.

Below the models (the registry gives each model one) and used by every decoder and backend.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Interpolation(str, enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes the model's input: shorter side resized, center crop, normalize."""

    resize_size: int
    crop_size: int
    interpolation: Interpolation
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
