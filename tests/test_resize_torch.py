"""Large images resize on torch's uint8 antialiased kernels (imgclassify.decode.resize): within
1 level of Pillow's pixels on the repository's photos scaled up and on a synthetic 12 MP image,
every EXIF orientation, uint8 all the way, no copy of the photo, no threads started; smaller
images keep Pillow's (torchvision's) pixels exactly; top-1 unchanged on the labelled photos.
All with --exact-decode (the default decodes JPEGs of at least twice the resize size at reduced
scale: tests/test_decode_modes.py)."""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from conftest import LABELLED, SAMPLES
from imgclassify.decode import imaging, resize
from imgclassify.decode.imaging import (
    DecodeMode,
    DecodeOptions,
    load_tensor,
    open_image,
    preprocess,
    uses_torch_resize,
)
from imgclassify.models.registry import get_spec

#: the tests of torch's path, where torch runs its AVX2 kernels (elsewhere Pillow resizes everything)
fast_kernels = pytest.mark.skipif(not resize.fast_kernels(), reason="torch's AVX2 uint8 kernels do not run here")
BICUBIC = get_spec("efficientnet_lite0").preprocess  # 256 -> 224, bicubic
BILINEAR = get_spec("densenet121").preprocess  # 256 -> 224, bilinear
PHOTOS = sorted(LABELLED.glob("*.JPEG")) + sorted(SAMPLES.glob("*.jpg"))
RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
EXACT = DecodeOptions(DecodeMode.EXACT)  # --exact-decode: every JPEG decoded at full size


def pillow_reference(image: Image.Image, config: Any) -> torch.Tensor:
    """Resize -> CenterCrop with Pillow: torchvision's pixels (tests/test_preprocess_pillow.py)."""
    width, height = image.size
    size = (256, int(256 * height / width)) if width <= height else (int(256 * width / height), 256)
    assert config.resize_size == 256
    resized = image.resize(size, RESAMPLE[config.interpolation.value])
    crop = config.crop_size
    top, left = round((size[1] - crop) / 2.0), round((size[0] - crop) / 2.0)
    array = np.asarray(resized.crop((left, top, left + crop, top + crop)))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def jpeg(image: Image.Image, **save: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=92, **save)
    return out.getvalue()


@pytest.fixture
def torch_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Every call of torch's interpolate from the resize: its input and output, as seen."""
    calls: list[dict[str, Any]] = []
    original = torch.nn.functional.interpolate

    def spy(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = original(x, *args, **kwargs)
        calls.append(
            {
                "dtype": x.dtype,
                "out_dtype": out.dtype,
                "channels_last": x.is_contiguous(memory_format=torch.channels_last),
                "shape": tuple(x.shape),
                "antialias": kwargs.get("antialias"),
                "mode": kwargs.get("mode"),
            }
        )
        return out

    monkeypatch.setattr(torch.nn.functional, "interpolate", spy)
    yield calls


def level_difference(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    assert got.dtype == want.dtype == torch.uint8 and got.shape == want.shape
    return (got.int() - want.int()).abs()


@pytest.fixture(scope="module")
def upscaled() -> list[tuple[str, bytes]]:
    """The repository's photos with the shorter side 1100 (4.3x the resize size): JPEG bytes."""
    out = []
    for path in PHOTOS:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        scale = 1100 / min(rgb.size)
        big = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.LANCZOS)
        out.append((path.name, jpeg(big)))
    return out


@fast_kernels
@pytest.mark.parametrize("config", [BICUBIC, BILINEAR], ids=["bicubic", "bilinear"])
def test_within_a_level_of_pillow_on_the_photos_scaled_up(
    config: Any, upscaled: list[tuple[str, bytes]], torch_calls: list[dict[str, Any]]
) -> None:
    differing = values = 0
    for name, data in upscaled:
        reference = pillow_reference(open_image(io.BytesIO(data), EXACT), config)
        got = load_tensor(io.BytesIO(data), config, EXACT)
        diff = level_difference(got, reference)
        assert int(diff.max()) <= 1, f"{name}: {int(diff.max())} levels from Pillow's"
        differing += int((diff > 0).sum())
        values += diff.numel()
    assert len(torch_calls) == len(upscaled), "every scaled-up photo resizes on torch's kernels"
    assert all(c["dtype"] == c["out_dtype"] == torch.uint8 and c["channels_last"] for c in torch_calls)
    assert all(c["antialias"] is True and c["mode"] == config.interpolation.value for c in torch_calls)
    assert all(c["shape"][1] == 4 for c in torch_calls), "Pillow's RGBX pixels, not a repacked copy"
    assert 0 < differing / values < 0.005, f"{differing}/{values} values differ"


def synthetic_photo(width: int = 4032, height: int = 3024) -> Image.Image:
    """12 MP: gradients, sharp edges, fine stripes and noise (what a resize filter must handle)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 255 * x / width
    green = 127 + 120 * np.sin(x / 3.0) * (y < height / 2) + 60 * ((x // 97 + y // 89) % 2)
    blue = 255 * ((x - width / 2) ** 2 + (y - height / 2) ** 2 < (height / 3) ** 2) * (0.5 + 0.5 * np.cos(y / 2.0))
    pixels = np.stack([red, green, blue], axis=-1) + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def synthetic() -> tuple[Image.Image, bytes]:
    image = synthetic_photo()
    return image, jpeg(image)


@fast_kernels
@pytest.mark.parametrize("config", [BICUBIC, BILINEAR], ids=["bicubic", "bilinear"])
def test_within_a_level_of_pillow_on_a_synthetic_12_megapixel_image(
    config: Any, synthetic: tuple[Image.Image, bytes], torch_calls: list[dict[str, Any]]
) -> None:
    _, data = synthetic
    decoded = open_image(io.BytesIO(data), EXACT)
    diff = level_difference(load_tensor(io.BytesIO(data), config, EXACT), pillow_reference(decoded, config))
    assert len(torch_calls) == 1 and torch_calls[0]["shape"] == (1, 4, 3024, 4032)
    assert int(diff.max()) <= 1
    assert 0 < float(diff.float().mean()) < 0.01


@fast_kernels
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_after_the_resize(
    orientation: int, synthetic: tuple[Image.Image, bytes], torch_calls: list[dict[str, Any]]
) -> None:
    """The photo is resized as stored and the small result turned: the same pixels, within a level,
    as turning the photo first and resizing it with Pillow (columns first for a quarter turn)."""
    image, _ = synthetic
    exif = Image.Exif()
    exif[resize.ORIENTATION] = orientation
    data = jpeg(image.crop((0, 0, 3000, 2400)), exif=exif)  # not square: a wrong turn cannot pass
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    diff = level_difference(load_tensor(io.BytesIO(data), BICUBIC, EXACT), pillow_reference(upright, BICUBIC))
    assert int(diff.max()) <= 1 and float(diff.float().mean()) < 0.01
    assert len(torch_calls) == (2 if resize.swaps_axes(orientation) else 1)
    assert torch_calls[0]["shape"] == (1, 4, 2400, 3000), "resized as stored, not turned first"


def test_the_repository_photos_keep_pillows_pixels_exactly(torch_calls: list[dict[str, Any]]) -> None:
    """ImageNet-sized photos (shorter side under 4x the resize size) still resize with Pillow."""
    for path in PHOTOS:
        upright = open_image(path, EXACT)
        assert load_tensor(path, BICUBIC, EXACT).equal(pillow_reference(upright, BICUBIC)), path.name
    assert not any(uses_torch_resize(open_image(p, EXACT).size, BICUBIC) for p in PHOTOS)
    assert len(torch_calls) == 0


def test_storage_torch_cannot_view_is_resized_by_pillow(torch_calls: list[dict[str, Any]]) -> None:
    """An image over 16 MB made in memory is in Pillow's chain of blocks: no view, Pillow's resize."""
    image = synthetic_photo(2400, 1800)  # 17 MB as RGBX
    assert resize.pixel_view(image) is None
    assert preprocess(image, BICUBIC).equal(pillow_reference(image, BICUBIC))
    assert len(torch_calls) == 0
    small = image.resize((1200, 900))  # one block of 4.3 MB: viewed in place
    view = resize.pixel_view(small)
    assert view is not None and view.shape == (900, 1200, 4)
    assert np.array_equal(view[..., :3], np.asarray(small))


def test_the_view_is_pillows_memory_and_outlives_the_image() -> None:
    image = Image.new("RGB", (640, 480), (10, 20, 30))
    view = resize.pixel_view(image)
    assert view is not None and not view.flags.owndata
    image.paste((200, 100, 50), (0, 0, 640, 480))  # the same memory: the view sees the change
    assert tuple(view[0, 0, :3]) == (200, 100, 50)
    del image
    assert tuple(view[479, 639, :3]) == (200, 100, 50)  # Pillow's export holds the pixels


@fast_kernels
def test_large_jpegs_decode_into_one_block(synthetic: tuple[Image.Image, bytes]) -> None:
    _, data = synthetic
    image, orientation = imaging._open(io.BytesIO(data), EXACT, 256, BICUBIC)
    assert orientation == 1 and image.im.isblock() and resize.pixel_view(image) is not None
    assert not open_image(io.BytesIO(data), EXACT).im.isblock()  # open_image alone changes nothing


@fast_kernels
def test_fast_decode_resizes_on_torch_at_any_downscale(
    synthetic: tuple[Image.Image, bytes], torch_calls: list[dict[str, Any]]
) -> None:
    _, data = synthetic
    fast = load_tensor(io.BytesIO(data), BICUBIC, DecodeOptions(DecodeMode.FAST))
    drafted = open_image(io.BytesIO(data), DecodeOptions(DecodeMode.FAST))
    assert min(drafted.size) < resize.TORCH_FACTOR * 256 and len(torch_calls) == 1  # 504x378
    assert int(level_difference(fast, pillow_reference(drafted, BICUBIC)).max()) <= 2


def test_the_kernel_only_takes_uint8() -> None:
    with pytest.raises(TypeError, match="not uint8"):
        resize.resize(np.zeros((600, 800, 4), np.float32), (341, 256), BICUBIC.interpolation)


@fast_kernels
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc")
def test_resizing_in_a_decode_thread_starts_no_threads(synthetic: tuple[Image.Image, bytes]) -> None:
    _, data = synthetic
    image, _ = imaging._open(io.BytesIO(data), EXACT, 256, BICUBIC)
    counts: list[int] = []

    def body() -> None:
        before = len(os.listdir("/proc/self/task"))
        preprocess(image, BICUBIC)
        counts.append(len(os.listdir("/proc/self/task")) - before)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert counts == [0], "torch's resize ran intra-op threads: decode threads would oversubscribe"


@fast_kernels
@pytest.mark.slow
def test_top1_unchanged_on_the_labelled_photos_scaled_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The labelled photos at 4.3x (torch's resize) classify as with Pillow's resize, 50/50."""
    from imgclassify import load_classifier

    exact = load_classifier("efficientnet_lite0", device="cpu", decode=EXACT)
    paths = []
    for path in sorted(LABELLED.glob("*.JPEG")):
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        scale = 1100 / min(rgb.size)
        target = tmp_path / path.name
        rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.LANCZOS).save(
            target, quality=92
        )
        paths.append(target)
    now = {Path(p.path).name: p.class_id for p in exact.predict(paths, batch_size=8, workers=0)}
    monkeypatch.setattr(resize, "torch_resize_applies", lambda *args, **kwargs: False)
    today = {Path(p.path).name: p.class_id for p in exact.predict(paths, batch_size=8, workers=0)}
    assert now == today
