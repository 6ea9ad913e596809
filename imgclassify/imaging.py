"""Opening one image file and turning it into the model's input tensor (uint8, CHW).

Every failure becomes an :class:`~imgclassify.errors.ImageError` with a readable reason, so
one bad file never stops a run nor touches the other files' results.
"""

from __future__ import annotations

import errno
import math
import os
from typing import IO, TYPE_CHECKING

from PIL import Image, ImageOps, UnidentifiedImageError

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


def open_image(source: str | os.PathLike[str] | IO[bytes], *, draft_short_side: int | None = None) -> Image.Image:
    """Open and fully decode an image as RGB with its EXIF orientation applied.

    ``draft_short_side``: a JPEG at least twice that size on its shorter side is decoded at a
    reduced scale (libjpeg's DCT scaling, 1/2 to 1/8) that still leaves the shorter side at
    least that long: several times faster on camera photos, pixels slightly different.
    """
    try:
        if isinstance(source, (str, os.PathLike)) and os.path.isfile(source) and os.path.getsize(source) == 0:
            raise ImageError("empty file")
        with Image.open(source) as image:
            if draft_short_side and image.format == "JPEG" and min(image.size) >= 2 * draft_short_side:
                ratio = draft_short_side / min(image.size)
                image.draft(image.mode, (math.ceil(image.width * ratio), math.ceil(image.height * ratio)))
            image.load()
            oriented = ImageOps.exif_transpose(image)
            return to_rgb(oriented if oriented is not None else image)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as exc:
        raise ImageError(_reason(exc)) from None


def preprocess(image: Image.Image, config: PreprocessConfig) -> torch.Tensor:
    """Resize the shorter side, center-crop, return a uint8 CHW tensor (normalized later, per batch).

    Same arithmetic as torchvision's Resize -> CenterCrop -> ToTensor on a PIL image; the
    float conversion and mean/std normalization happen once per batch on the device.
    """
    from torchvision.transforms import functional as F

    image = F.resize(image, config.resize_size, interpolation=F.InterpolationMode(config.interpolation.value))
    image = F.center_crop(image, [config.crop_size, config.crop_size])
    tensor: torch.Tensor = F.pil_to_tensor(image)
    return tensor


def load_tensor(
    source: str | os.PathLike[str] | IO[bytes], config: PreprocessConfig, *, fast_decode: bool = False
) -> torch.Tensor:
    """``open_image`` then ``preprocess``; ``fast_decode`` decodes big JPEGs at reduced scale."""
    return preprocess(open_image(source, draft_short_side=config.resize_size if fast_decode else None), config)
