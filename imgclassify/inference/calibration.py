"""The calibration set for int8 quantization: bundled photos, seeded random crops, one hash.

The photos in ``data/calibration/`` (the sample photos; never the labelled photos the accuracy
test measures) give :data:`CALIBRATION_SIZE` views: seeded random crops (a quarter to all of
the photo, aspect 3:4 to 4:3), half of them mirrored, resized with the model's interpolation to
its input size. The set does not depend on the run's own images, so one quantized model serves
every run, and :func:`calibration_sha256` (the photos' bytes, the recipe and the input size)
names it in the cache and in the run manifest.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from importlib import resources
from typing import TYPE_CHECKING

from imgclassify.decode.preprocess import Interpolation, PreprocessConfig
from imgclassify.system.digests import sha256_bytes, sha256_json

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

#: views in the calibration set (NNCF's own default subset size is 300)
CALIBRATION_SIZE = 300
_SEED = 11
_RECIPE = 1  # bump when the views change: a new hash, a new cached model


def calibration_photos() -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of the bundled calibration photos, sorted by name."""
    folder = resources.files("imgclassify") / "data" / "calibration"
    return sorted((entry.name, entry.read_bytes()) for entry in folder.iterdir() if entry.name.endswith(".jpg"))


def calibration_sha256(preprocess: PreprocessConfig, size: int = CALIBRATION_SIZE) -> str:
    """Names the calibration set: the photos' sha256, the recipe, the count and the input size."""
    photos = [[name, sha256_bytes(data)] for name, data in calibration_photos()]
    return sha256_json(
        {"recipe": _RECIPE, "seed": _SEED, "size": size, "crop": preprocess.crop_size,
         "interpolation": preprocess.interpolation.value, "photos": photos}
    )  # fmt: skip


def _resample(interpolation: Interpolation) -> Image.Resampling:
    from PIL import Image

    return {
        Interpolation.NEAREST: Image.Resampling.NEAREST,
        Interpolation.BILINEAR: Image.Resampling.BILINEAR,
        Interpolation.BICUBIC: Image.Resampling.BICUBIC,
    }[interpolation]


def calibration_views(preprocess: PreprocessConfig, size: int = CALIBRATION_SIZE) -> Iterator[np.ndarray]:
    """``size`` uint8 (3, crop, crop) arrays, the same every time (normalize them like a batch)."""
    import io

    import numpy as np
    from PIL import Image

    rng = random.Random(_SEED)
    images = [Image.open(io.BytesIO(data)).convert("RGB") for _, data in calibration_photos()]
    crop, resample = preprocess.crop_size, _resample(preprocess.interpolation)
    for i in range(size):
        image = images[i % len(images)]
        width, height = image.size
        area = width * height * rng.uniform(0.25, 1.0)
        aspect = rng.uniform(3 / 4, 4 / 3)
        w = min(width, max(8, round((area * aspect) ** 0.5)))
        h = min(height, max(8, round((area / aspect) ** 0.5)))
        left, top = rng.randint(0, width - w), rng.randint(0, height - h)
        view = image.resize((crop, crop), resample, box=(left, top, left + w, top + h))
        if rng.random() < 0.5:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        yield np.asarray(view, dtype=np.uint8).transpose(2, 0, 1).copy()
