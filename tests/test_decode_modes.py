"""The decode modes (imgclassify.decode.imaging.DECODE_MODES): by default JPEGs whose shorter side is
at least twice the resize size are decoded at reduced scale and then resized by the exact path's
rule; ``--exact-decode`` decodes every image at full size (torchvision's reference pixels);
``--fast-decode`` adds torch's resize at any downscale. Images under twice the resize size, and
formats other than JPEG, decode the same way in every mode."""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image, ImageOps
from typer.testing import CliRunner

from conftest import SAMPLES
from imgclassify.decode import imaging, resize
from imgclassify.decode.imaging import (
    DECODE_MODES,
    DEFAULT_DECODE_MODE,
    DecodeMode,
    DecodeOptions,
    decode_mode,
    load_tensor,
    open_image,
)
from imgclassify.decode.preprocess import PreprocessConfig
from imgclassify.errors import UsageError
from imgclassify.models.registry import get_spec

BICUBIC = get_spec("efficientnet_lite0").preprocess  # 256 -> 224, bicubic
EXACT = DecodeOptions(DecodeMode.EXACT)


def torchvision_reference(image: Image.Image, config: PreprocessConfig) -> torch.Tensor:
    from torchvision.transforms import functional as F

    image = F.resize(image, config.resize_size, interpolation=F.InterpolationMode(config.interpolation.value))
    image = F.center_crop(image, [config.crop_size, config.crop_size])
    tensor: torch.Tensor = F.pil_to_tensor(image)
    return tensor


def photo(width: int, height: int, fmt: str = "JPEG", **save: Any) -> bytes:
    """A sample photo stretched to ``width`` x ``height`` (real detail, so the decodes differ)."""
    with Image.open(SAMPLES / "kitten.jpg") as image:
        big = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    big.save(out, fmt, **({"quality": 92} if fmt == "JPEG" else {}), **save)
    return out.getvalue()


def reduced_scale(size: tuple[int, int], short_side: int) -> int:
    """The DCT scale reduced-scale decoding should take: the smallest 1/s (s = 8, 4, 2, 1) whose
    decoded shorter side (libjpeg's ``ceil(short / s)``) is still above ``short_side``, so that
    the resize (and its antialiasing filter) always runs after it."""
    return max(s for s in (1, 2, 4, 8) if s == 1 or -(-min(size) // s) > short_side)


def drafted(data: bytes, short_side: int) -> Image.Image:
    """What reduced-scale decoding gives: the file decoded by libjpeg at ``reduced_scale``."""
    image = Image.open(io.BytesIO(data))
    scale = reduced_scale(image.size, short_side)
    image.draft("RGB", (image.width // scale, image.height // scale))
    return ImageOps.exif_transpose(image).convert("RGB")


def test_one_row_per_mode_and_the_default() -> None:
    assert set(DECODE_MODES) == set(DecodeMode)
    assert [(DECODE_MODES[m].reduced_scale, DECODE_MODES[m].torch_at_any_downscale) for m in DecodeMode] == [
        (False, False),
        (True, False),
        (True, True),
    ]
    assert [DECODE_MODES[m].option for m in DecodeMode] == ["--exact-decode", None, "--fast-decode"]
    assert DEFAULT_DECODE_MODE is DecodeMode.REDUCED and DecodeOptions().mode is DecodeMode.REDUCED


def test_decode_options_take_a_mode_and_the_old_fast_keyword() -> None:
    assert DecodeOptions("exact") == EXACT and DecodeOptions(mode="fast").mode is DecodeMode.FAST
    assert DecodeOptions(fast=True) == DecodeOptions(DecodeMode.FAST) and DecodeOptions(fast=True).fast
    assert DecodeOptions(fast=False) == DecodeOptions() and not DecodeOptions().fast
    assert dataclasses.replace(DecodeOptions(max_pixels=10), mode=DecodeMode.EXACT) == DecodeOptions("exact", False, 10)
    options = DecodeOptions(DecodeMode.FAST, allow_truncated=True, max_pixels=1234)
    assert pickle.loads(pickle.dumps(options)) == options and hash(options) == hash(pickle.loads(pickle.dumps(options)))
    with pytest.raises(UsageError, match="'quick' is not one of exact, reduced, fast"):
        DecodeOptions("quick")
    with pytest.raises(UsageError, match="contradict"):
        DecodeOptions(DecodeMode.EXACT, fast=True)


def test_the_options_choose_the_mode() -> None:
    assert decode_mode() is DecodeMode.REDUCED
    assert decode_mode(exact=True) is DecodeMode.EXACT and decode_mode(fast=True) is DecodeMode.FAST
    with pytest.raises(UsageError, match="--exact-decode and --fast-decode contradict each other"):
        decode_mode(exact=True, fast=True)


def test_big_jpegs_decode_at_reduced_scale_by_default_with_the_exact_resize() -> None:
    """1200x900 (shorter side 3.5x 256): drafted to 600x450 by default, then Pillow's resize as on the
    exact path (torchvision's arithmetic on the drafted pixels); --exact-decode: the full decode's."""
    data = photo(1200, 900)
    assert open_image(io.BytesIO(data)).size == (600, 450)
    assert open_image(io.BytesIO(data), EXACT).size == (1200, 900)
    default = load_tensor(io.BytesIO(data), BICUBIC)
    assert default.equal(torchvision_reference(drafted(data, 256), BICUBIC))
    exact = load_tensor(io.BytesIO(data), BICUBIC, EXACT)
    assert exact.equal(torchvision_reference(Image.open(io.BytesIO(data)).convert("RGB"), BICUBIC))
    assert not default.equal(exact)


def test_the_reduced_scale_decode_turns_the_photo_by_its_exif_orientation() -> None:
    exif = Image.Exif()
    exif[resize.ORIENTATION] = 6
    data = photo(1200, 900, exif=exif)
    assert open_image(io.BytesIO(data)).size == (450, 600)
    assert load_tensor(io.BytesIO(data), BICUBIC).equal(torchvision_reference(drafted(data, 256), BICUBIC))


@pytest.mark.parametrize(
    ("width", "height", "decoded"),
    [
        ((683, 512, (683, 512))),  # exactly twice: halved it would be 256, resized no more: decoded whole
        ((690, 520, (345, 260))),
        ((520, 690, (260, 345))),
        ((1365, 1024, (683, 512))),  # 4x: halved, not quartered
        ((2200, 1030, (550, 258))),  # a quarter
        ((1026, 1025, (257, 257))),  # a quarter (asking for 256 rounded up would only halve it)
        ((4032, 3024, (504, 378))),  # 12 MP: an eighth
        ((5000, 2100, (625, 263))),  # an eighth is the smallest scale libjpeg has
    ],
)
def test_the_smallest_scale_that_keeps_the_shorter_side_above_the_resize_size(
    width: int, height: int, decoded: tuple[int, int]
) -> None:
    data = photo(width, height)
    assert open_image(io.BytesIO(data)).size == decoded
    scale = reduced_scale((width, height), 256)
    assert decoded == (-(-width // scale), -(-height // scale))


@pytest.mark.parametrize(("width", "height", "fmt"), [(700, 511, "JPEG"), (511, 700, "JPEG"), (1200, 900, "PNG")])
def test_small_jpegs_and_other_formats_decode_the_same_in_every_mode(width: int, height: int, fmt: str) -> None:
    """Shorter side under twice the resize size, or not a JPEG: full size in every mode, torchvision's
    pixels by default (--fast-decode resizes on torch's kernels, within 2 levels)."""
    data = photo(width, height, fmt)
    reference = torchvision_reference(Image.open(io.BytesIO(data)).convert("RGB"), BICUBIC)
    for mode in DecodeMode:
        assert open_image(io.BytesIO(data), DecodeOptions(mode)).size == (width, height), mode
    assert load_tensor(io.BytesIO(data), BICUBIC).equal(reference)
    assert load_tensor(io.BytesIO(data), BICUBIC, EXACT).equal(reference)


def test_twice_the_models_own_resize_size() -> None:
    """The threshold follows the resize size: 700x500 is drafted for a resize of 200, not of 256."""
    small_model = PreprocessConfig(200, 176, BICUBIC.interpolation, BICUBIC.mean, BICUBIC.std)
    data = photo(700, 500)
    image, _ = imaging._open(io.BytesIO(data), DecodeOptions(), small_model.resize_size, small_model)
    assert image.size == (350, 250)
    assert load_tensor(io.BytesIO(data), small_model).shape == (3, 176, 176)
    assert open_image(io.BytesIO(data), short_side=256).size == (700, 500)


@pytest.mark.skipif(not resize.fast_kernels(), reason="torch's AVX2 uint8 kernels do not run here")
def test_only_fast_decode_resizes_drafted_images_on_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """2400x1800: --exact-decode resizes the full decode on torch's kernels (at least 4x), the
    default drafts it to 600x450 and resizes that with Pillow, --fast-decode drafts it and uses torch's."""
    data = photo(2400, 1800)
    calls: list[tuple[int, ...]] = []
    original = resize.resize

    def counting(pixels: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(pixels.shape)
        return original(pixels, *args, **kwargs)

    monkeypatch.setattr(resize, "resize", counting)
    seen = {}
    for mode in DecodeMode:
        calls.clear()
        load_tensor(io.BytesIO(data), BICUBIC, DecodeOptions(mode))
        seen[mode] = list(calls)
    assert seen == {DecodeMode.EXACT: [(1800, 2400, 4)], DecodeMode.REDUCED: [], DecodeMode.FAST: [(450, 600, 4)]}


def test_predict_exact_decode_and_fast_decode(tmp_path: Path) -> None:
    """The options reach the decoder and the manifest: kitten.jpg (720x720) gets three inputs."""
    from imgclassify.cli import app

    runner = CliRunner()
    probabilities, modes = [], []
    for i, flags in enumerate(([], ["--exact-decode"], ["--fast-decode"])):
        out = tmp_path / f"{i}.jsonl"
        args = ["predict", str(SAMPLES / "kitten.jpg"), "-m", "efficientnet_lite0", "-q", "-o", str(out), *flags]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        probabilities.append(json.loads(out.read_text())["probability"])
        modes.append(json.loads((tmp_path / f"{i}.jsonl.manifest.json").read_text())["preprocessing"]["decode_mode"])
    assert modes == ["reduced", "exact", "fast"]
    assert len(set(probabilities)) == 3, probabilities
