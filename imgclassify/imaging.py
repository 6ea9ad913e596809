"""Opening one image file and turning it into the model's input tensor (uint8, CHW).

Every failure becomes an :class:`~imgclassify.errors.ImageError` with a readable reason, so
one bad file never stops a run nor touches the other files' results.
"""

from __future__ import annotations

import errno
import math
import os
import warnings
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageError
from .registry import PreprocessConfig

if TYPE_CHECKING:
    import torch


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: alpha composited on white, 16-bit and float scaled down."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        low, high = (float(v) for v in image.getextrema())  # type: ignore[arg-type]
        if image.mode.startswith("I;16") or (image.mode == "I" and high > 255):
            low, high = 0.0, 65535.0
        elif image.mode == "I":
            low, high = 0.0, 255.0
        scale = 255.0 / ((high - low) or 1.0)
        image = image.convert("F").point(lambda v: (v - low) * scale).convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image, or a format Pillow cannot read"
    if isinstance(exc, Image.DecompressionBombError):
        return f"image too large: {exc}"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno) if exc.errno != errno.EIO else "I/O error"
    text = str(exc).strip()
    if "truncated" in text:
        return "truncated image file"
    return f"cannot decode image: {text or type(exc).__name__}"


#: Pillow's own decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS): the default --max-pixels
DEFAULT_MAX_PIXELS = 178_956_970

# The limit below is checked on the decoded size, after reduced-scale JPEG decoding; Pillow's
# own check (on the file's nominal size, at open) would refuse big JPEGs that decode fine.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class DecodeOptions:
    """How files are decoded: shared by ``predict`` and ``serve``."""

    #: decode JPEGs of at least twice the needed size at reduced scale (faster, pixels differ slightly)
    fast: bool = False
    #: accept truncated files (the missing part is grey) instead of an error
    allow_truncated: bool = False
    #: refuse images with more pixels than this, after any reduced-scale decoding
    max_pixels: int = DEFAULT_MAX_PIXELS


def _draft_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    ratio = short_side / min(size)
    return math.ceil(size[0] * ratio), math.ceil(size[1] * ratio)


def _decode(source: str | os.PathLike[str] | IO[bytes], options: DecodeOptions, short_side: int) -> Image.Image:
    with Image.open(source) as image:
        width, height = image.size
        big_jpeg = image.format == "JPEG" and min(image.size) >= 2 * short_side
        if big_jpeg and (options.fast or width * height > options.max_pixels):
            image.draft(image.mode, _draft_size(image.size, short_side))
        if image.width * image.height > options.max_pixels:
            raise ImageError(f"image too large: {width}x{height} pixels is more than --max-pixels {options.max_pixels}")
        ImageFile.LOAD_TRUNCATED_IMAGES = options.allow_truncated
        image.load()
        oriented = ImageOps.exif_transpose(image)
        return to_rgb(oriented if oriented is not None else image)


def open_image(
    source: str | os.PathLike[str] | IO[bytes], options: DecodeOptions | None = None, *, short_side: int = 256
) -> Image.Image:
    """Open and fully decode an image as RGB with its EXIF orientation applied.

    JPEGs are decoded at reduced scale (libjpeg's DCT scaling, 1/2 to 1/8, keeping the shorter
    side at least ``short_side``) when ``options.fast`` asks for it, and always when that is
    what brings a huge JPEG under ``options.max_pixels``. Every failure is an ImageError.
    """
    options = options or DecodeOptions()
    try:
        if isinstance(source, (str, os.PathLike)) and os.stat(source).st_size == 0:
            raise ImageError("empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on odd files; failures are raised, not warned
            return _decode(source, options, short_side)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as exc:
        raise ImageError(_reason(exc)) from None
    except MemoryError:
        raise ImageError("not enough memory to decode this image; lower --max-pixels") from None
    except Exception as exc:
        raise ImageError(f"cannot decode image: {type(exc).__name__}: {exc}"[:300]) from None


def preprocess(image: Image.Image, config: PreprocessConfig) -> torch.Tensor:
    """Resize the shorter side, center-crop, return a uint8 CHW tensor (normalized later, per batch).

    Same arithmetic as torchvision's Resize -> CenterCrop -> ToTensor on a PIL image; the
    float conversion and mean/std normalization happen once per batch on the device. Done with
    Pillow alone (identical pixels; a test compares): importing torchvision costs about 1 s.
    """
    import numpy as np
    import torch

    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_short, new_long = config.resize_size, int(config.resize_size * long / short)
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    crop = config.crop_size
    if min(size) >= crop:  # else torchvision pads the crop: keep its code for that
        resample = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR}.get(
            config.interpolation.value, Image.Resampling.BICUBIC
        )
        if size != image.size:
            image = image.resize(size, resample)
        top, left = round((size[1] - crop) / 2.0), round((size[0] - crop) / 2.0)
        image = image.crop((left, top, left + crop, top + crop))
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    from torchvision.transforms import functional as F

    image = F.resize(image, config.resize_size, interpolation=F.InterpolationMode(config.interpolation.value))
    image = F.center_crop(image, [config.crop_size, config.crop_size])
    tensor: torch.Tensor = F.pil_to_tensor(image)
    return tensor


def load_tensor(
    source: str | os.PathLike[str] | IO[bytes], config: PreprocessConfig, options: DecodeOptions | None = None
) -> torch.Tensor:
    """``open_image`` then ``preprocess``: a uint8 (3, crop, crop) tensor, or an ImageError."""
    image = open_image(source, options, short_side=config.resize_size)
    try:
        return preprocess(image, config)
    except Exception as exc:
        raise ImageError(f"cannot preprocess image: {type(exc).__name__}: {exc}"[:300]) from None
