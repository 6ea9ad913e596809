"""preprocess() resizes and crops with Pillow alone: the same pixels as torchvision's
Resize -> CenterCrop -> PILToTensor, for every interpolation and aspect ratio (and it leaves
torchvision unimported, which saves about a second of start-up)."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
from PIL import Image

from conftest import ROOT, SAMPLES
from imgclassify.decode.imaging import preprocess
from imgclassify.models.registry import IMAGENET_MEAN, IMAGENET_STD, Interpolation, PreprocessConfig

SIZES = [
    (256, 256),
    (256, 259),
    (259, 256),
    (257, 300),
    (300, 257),
    (1000, 250),
    (250, 1000),
    (10, 13),
    (224, 224),
    (641, 479),
    (20, 300),  # 15:1, still under imaging.EXACT_ASPECT: resized whole, pixel-exact
]
# More elongated images (3 x 900: the resize would be 256 x 76,800) resize only the box the crop
# keeps, to bound memory; that path is checked against torchvision in tests/test_bad_inputs.py.


def torchvision_reference(image: Image.Image, config: PreprocessConfig):  # type: ignore[no-untyped-def]
    from torchvision.transforms import functional as F

    image = F.resize(image, config.resize_size, interpolation=F.InterpolationMode(config.interpolation.value))
    image = F.center_crop(image, [config.crop_size, config.crop_size])
    return F.pil_to_tensor(image)


@pytest.mark.parametrize("interpolation", list(Interpolation))
@pytest.mark.parametrize(("resize", "crop"), [(256, 224), (232, 224), (342, 299), (200, 224)])
def test_same_pixels_as_torchvision(interpolation: Interpolation, resize: int, crop: int) -> None:
    config = PreprocessConfig(resize, crop, interpolation, IMAGENET_MEAN, IMAGENET_STD)
    rng = random.Random(0)
    with Image.open(SAMPLES / "kitten.jpg") as photo:
        source = photo.convert("RGB")
    for width, height in SIZES:
        left, top = rng.randint(0, 50), rng.randint(0, 50)
        image = source.resize((width, height), box=(left, top, left + 300, top + 250))
        got, want = preprocess(image, config), torchvision_reference(image, config)
        assert got.dtype == want.dtype and got.shape == want.shape == (3, crop, crop)
        assert got.equal(want), f"{width}x{height} {interpolation.value}"


def test_preprocess_does_not_import_torchvision() -> None:
    code = (
        "import sys; from PIL import Image; from imgclassify.decode.imaging import load_tensor;"
        "from imgclassify.models.registry import get_spec;"
        f"load_tensor({str(SAMPLES / 'kitten.jpg')!r}, get_spec('densenet121').preprocess);"
        "print(sorted(m for m in sys.modules if m.startswith('torchvision')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
