"""Opening one image file and turning it into the model's input tensor (uint8, CHW).

Every failure becomes an :class:`~imgclassify.errors.ImageError` with a readable reason, so
one bad file never stops a run nor touches the other files' results.

Memory: one image's peak is bounded by its decoded size (which ``DecodeOptions.max_pixels``
bounds), never by its shape or by what its header claims; see README, "Bad input". Mode
conversions run tile by tile, the EXIF rotation happens in place (or, for a photo resized on
torch's kernels, on the resized image: :mod:`imgclassify.decode.resize`), and preprocessing
resizes only the part of the image the center crop keeps, so a 1 x 100,000 image never becomes
25,600,000 x 256.

Importing this module changes nothing process-wide: Pillow's ``MAX_IMAGE_PIXELS`` is left as it
is (our own limit is checked instead), and HEIF files are read through pillow-heif's plugin
class directly, without registering it in Pillow.
"""

from __future__ import annotations

import enum
import errno
import math
import os
import stat
import struct
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from imgclassify.decode import resize as torch_resize
from imgclassify.decode.preprocess import PreprocessConfig
from imgclassify.errors import ImageError, UsageError
from imgclassify.extras import install_hint

if TYPE_CHECKING:
    import torch

#: Pillow's own decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS): the default --max-pixels
DEFAULT_MAX_PIXELS = 178_956_970

#: Mode conversions work on tiles of at most this many pixels (bounds their temporary images).
TILE_PIXELS = 1 << 20
#: Images whose resized long side is at most this many times the resize size take torchvision's
#: exact Resize -> CenterCrop path; beyond it only the cropped part is resized (see ``preprocess``).
EXACT_ASPECT = 16

#: One image's peak memory is at most BYTES_PER_PIXEL x max_pixels (+ the tiles and the crop,
#: under 64 MB): the decoded image (at most 4 bytes per pixel in Pillow) + its RGB copy (4).
BYTES_PER_PIXEL = 8
#: Formats whose decoders hold more than one copy (measured, bytes per pixel, with the RGB copy):
#: libwebp decodes into its own canvas, libheif into YUV planes, OpenJPEG into 32-bit planes,
#: before Pillow copies the pixels. Their pixel limit is scaled down so that the bound above
#: holds for them too.
DECODE_COST = {"WEBP": 16, "HEIF": 12, "AVIF": 12, "JPEG2000": 20}
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
#: ISO-BMFF major brands of HEIF/HEIC files (pillow-heif's list); AVIF is Pillow's own
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1")
_HEIF_MISSING = f"HEIC/HEIF image: reading it needs pillow-heif (the heif extra): {install_hint('heif')}"


# -- mode conversion -----------------------------------------------------------------------------


def _levels(image: Image.Image) -> tuple[float, float] | None:
    """(low, high) that map a 16-bit, 32-bit or float image onto 0..255; None for 8-bit modes."""
    if image.mode not in _HIGH_DEPTH_MODES:
        return None
    low, high = (float(v) for v in image.getextrema())  # type: ignore[arg-type]
    if image.mode.startswith("I;16") or (image.mode == "I" and 255 < high <= 65535 and low >= 0):
        return 0.0, 65535.0
    if image.mode == "I" and low >= 0 and high <= 255:
        return 0.0, 255.0
    if not (math.isfinite(low) and math.isfinite(high)):  # 32-bit and float: stretched low..high
        raise ImageError("float image with infinite pixels: save it with finite values, or as 8 or 16 bits")
    return low, high


def _tile_to_rgb(tile: Image.Image, levels: tuple[float, float] | None) -> Image.Image:
    if levels is not None:
        low, high = levels
        scale = 255.0 / ((high - low) or 1.0)
        tile = tile.convert("F").point(lambda v: (v - low) * scale).convert("L")
    if tile.mode == "P" and "transparency" in tile.info:
        tile = tile.convert("RGBA")
    if tile.mode in _ALPHA_MODES:
        rgba = tile.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return tile if tile.mode == "RGB" else tile.convert("RGB")


def _tiles(size: tuple[int, int]) -> Iterator[tuple[int, int, int, int]]:
    """Boxes covering an image of ``size``, each of at most TILE_PIXELS pixels."""
    width, height = size
    tile_width = min(width, 4096)
    rows = max(1, TILE_PIXELS // max(1, tile_width))
    for top in range(0, height, rows):
        for left in range(0, width, tile_width):
            yield left, top, min(width, left + tile_width), min(height, top + rows)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: alpha composited on white, 16-bit and float scaled down.

    Pixel by pixel, so done tile by tile: the peak is the image plus its RGB copy (4 bytes per
    pixel), whatever temporary modes a conversion needs (float is 4 bytes per pixel, twice).
    """
    if image.mode == "RGB":
        return image
    levels = _levels(image)
    if image.width * image.height <= TILE_PIXELS:
        return _tile_to_rgb(image, levels)
    rgb = Image.new("RGB", image.size)
    for box in _tiles(image.size):
        rgb.paste(_tile_to_rgb(image.crop(box), levels), box[:2])
    return rgb


# -- opening -------------------------------------------------------------------------------------


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


def _check_regular(mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise ImageError("is a directory")
    if not stat.S_ISREG(mode):
        raise ImageError("not a regular file (a FIFO, socket or device): pass image files only")


def open_file(path: str | os.PathLike[str]) -> IO[bytes]:
    """Open a regular, non-empty file for reading; anything else is an ImageError.

    A FIFO or a device is refused from ``os.stat`` before it is opened (opening a FIFO blocks,
    opening some devices has effects); the open itself is non-blocking and checked again with
    ``fstat``, so a file swapped for a FIFO in between cannot block either.
    """
    _check_regular(os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        _check_regular(info.st_mode)
        if info.st_size == 0:
            raise ImageError("empty file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _open_heif(fp: IO[bytes]) -> ImageFile.ImageFile:
    """pillow-heif's plugin class, used directly: nothing is registered in Pillow."""
    try:
        from pillow_heif import HeifImageFile
    except ImportError:
        raise ImageError(_HEIF_MISSING) from None
    fp.seek(0)
    image: ImageFile.ImageFile = HeifImageFile(fp)  # type: ignore[no-untyped-call]
    return image


def _open_bypassing_pillow_limit(fp: IO[bytes]) -> ImageFile.ImageFile:
    """What ``Image.open`` does, minus its pixel limit (ours, ``max_pixels``, is checked instead).

    Pillow's limit is the global ``Image.MAX_IMAGE_PIXELS``; lifting it for everyone is not ours
    to do, so the format's own factory is called through Pillow's registry.
    """
    Image.init()
    fp.seek(0)
    prefix = fp.read(16)
    for name in Image.ID:
        factory, accept = Image.OPEN[name]
        accepted = True if accept is None else accept(prefix)
        if accepted and not isinstance(accepted, str):
            fp.seek(0)
            try:
                return factory(fp, "")
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue
    raise UnidentifiedImageError("cannot identify image file")


def _identify(fp: IO[bytes]) -> ImageFile.ImageFile:
    try:
        return Image.open(fp)
    except Image.DecompressionBombError:
        return _open_bypassing_pillow_limit(fp)
    except UnidentifiedImageError:
        fp.seek(0)
        head = fp.read(12)
        if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
            return _open_heif(fp)
        raise


_truncated_lock = threading.Lock()
_truncated_users = 0
_truncated_saved = False


@contextmanager
def _truncated_images_allowed(allow: bool) -> Iterator[None]:
    """Pillow reads ``ImageFile.LOAD_TRUNCATED_IMAGES`` (a module global) inside its decoders and
    has no per-image switch. So it is set only when asked for (``allow_truncated``), counted
    across threads, and restored when the last such decode ends; the default never touches it.
    """
    global _truncated_users, _truncated_saved
    if not allow:
        yield
        return
    with _truncated_lock:
        if _truncated_users == 0:
            _truncated_saved = ImageFile.LOAD_TRUNCATED_IMAGES
        _truncated_users += 1
        ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        yield
    finally:
        with _truncated_lock:
            _truncated_users -= 1
            if _truncated_users == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _truncated_saved


class DecodeMode(str, enum.Enum):
    """How JPEGs are decoded and resized: ``--exact-decode``, the default, ``--fast-decode``
    (what each does: :data:`DECODE_MODES`)."""

    EXACT = "exact"
    REDUCED = "reduced"
    FAST = "fast"


@dataclass(frozen=True)
class DecodeRule:
    """What a :class:`DecodeMode` does."""

    #: JPEGs whose shorter side is at least twice the resize size are decoded at reduced scale
    #: (libjpeg's DCT scaling, 1/2 to 1/8, the shorter side kept above the resize size: ``_draft_size``)
    reduced_scale: bool
    #: every image made smaller resizes on torch's uint8 kernels (else only those of at least
    #: ``resize.TORCH_FACTOR`` times the resize size: :func:`uses_torch_resize`)
    torch_at_any_downscale: bool
    #: the option that asks for it (None: the default)
    option: str | None


#: the decode modes, one row each. The default, REDUCED, was chosen by measured accuracy: with the
#: bundled EfficientNet-Lite0 on the labelled photos upscaled to 2-8x the resize size and 12 MP,
#: reduced-scale decoding turned no top-1 wrong against the exact decode (358/400 correct against
#: 353; docs/performance.md, "Decoding large JPEGs"; benchmarks/decode_accuracy.py). EXACT keeps
#: torchvision's reference pixels.
DECODE_MODES: dict[DecodeMode, DecodeRule] = {
    DecodeMode.EXACT: DecodeRule(reduced_scale=False, torch_at_any_downscale=False, option="--exact-decode"),
    DecodeMode.REDUCED: DecodeRule(reduced_scale=True, torch_at_any_downscale=False, option=None),
    DecodeMode.FAST: DecodeRule(reduced_scale=True, torch_at_any_downscale=True, option="--fast-decode"),
}
DEFAULT_DECODE_MODE = DecodeMode.REDUCED


def decode_mode(*, exact: bool = False, fast: bool = False) -> DecodeMode:
    """The mode that ``--exact-decode`` and ``--fast-decode`` (or their ``IMGCLASSIFY_`` variables)
    ask for; both at once is a UsageError."""
    if exact and fast:
        raise UsageError("--exact-decode and --fast-decode contradict each other: give one of them")
    return DecodeMode.EXACT if exact else DecodeMode.FAST if fast else DEFAULT_DECODE_MODE


@dataclass(frozen=True, init=False)
class DecodeOptions:
    """How files are decoded: shared by ``predict`` and ``serve``.

    ``fast=True`` (the keyword of versions before ``mode``) means ``mode=DecodeMode.FAST``.
    """

    #: how JPEGs are decoded and resized (:data:`DECODE_MODES`): by default those of at least twice
    #: the resize size at reduced scale; EXACT: every image at full size (torchvision's pixels);
    #: FAST: reduced scale and torch's resize for every image made smaller
    mode: DecodeMode = DEFAULT_DECODE_MODE
    #: accept truncated files (the missing part is grey) instead of an error
    allow_truncated: bool = False
    #: refuse images with more pixels than this, after any reduced-scale decoding
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __init__(
        self,
        mode: DecodeMode | str = DEFAULT_DECODE_MODE,
        allow_truncated: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        *,
        fast: bool = False,
    ) -> None:
        try:
            chosen = DecodeMode(mode)
        except ValueError:
            choices = ", ".join(member.value for member in DecodeMode)
            raise UsageError(f"decode mode {mode!r} is not one of {choices}") from None
        if fast:  # FAST, or a UsageError for EXACT
            chosen = decode_mode(exact=chosen is DecodeMode.EXACT, fast=True)
        object.__setattr__(self, "mode", chosen)
        object.__setattr__(self, "allow_truncated", allow_truncated)
        object.__setattr__(self, "max_pixels", max_pixels)

    @property
    def rule(self) -> DecodeRule:
        return DECODE_MODES[self.mode]

    @property
    def fast(self) -> bool:
        """``--fast-decode``."""
        return self.mode is DecodeMode.FAST


def _draft_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """The size to ask Pillow's ``draft`` for so that it decodes at the smallest DCT scale 1/s (s = 8,
    4, 2 or 1) whose result, ``ceil(side / s)`` a side, keeps the shorter side above ``short_side``.

    Above, not at: decoded to exactly the resize size, an image would skip the resize and its
    antialiasing filter, and that cost accuracy where it was measured (docs/performance.md,
    "Decoding large JPEGs"), so a 1024 px shorter side is halved for 256, not quartered.
    ``draft`` takes the largest s with ``side // asked >= s`` for both sides, so asking
    ``side // s`` gets exactly s (asking the target size itself, rounded up, can get a smaller s)."""
    short = min(size)
    scale = next(s for s in (8, 4, 2, 1) if (short + s - 1) // s > short_side or s == 1)
    return max(1, size[0] // scale), max(1, size[1] // scale)


def pixel_limit(image_format: str | None, options: DecodeOptions) -> int:
    """The most pixels an image of this format may have: ``max_pixels``, scaled down for the
    formats whose decoders cost more than BYTES_PER_PIXEL (see DECODE_COST)."""
    cost = DECODE_COST.get(image_format or "", BYTES_PER_PIXEL)
    return options.max_pixels * BYTES_PER_PIXEL // max(cost, BYTES_PER_PIXEL)


def _check_pixels(image: ImageFile.ImageFile, size: tuple[int, int], options: DecodeOptions, when: str = "") -> None:
    width, height = size
    limit = pixel_limit(image.format, options)
    if width * height <= limit:
        return
    message = f"image too large: {width}x{height} pixels {when}is more than --max-pixels {options.max_pixels}"
    if limit < options.max_pixels:
        cost = DECODE_COST[image.format or ""]
        message += f" allows for {image.format} ({limit}: its decoder takes {cost} bytes per pixel)"
    raise ImageError(message)


def _decode(
    image: ImageFile.ImageFile, options: DecodeOptions, short_side: int, config: PreprocessConfig | None = None
) -> tuple[Image.Image, int]:
    """The decoded RGB image and the EXIF orientation still to apply to it (1: none).

    With ``config``, an RGB image that ``preprocess`` will resize on torch's kernels keeps its
    orientation for after the resize (``uses_torch_resize``), and a large JPEG among them is
    decoded into one memory block, where torch reads its pixels without a copy.
    """
    if image.format == "EPS":  # Pillow renders PostScript by running Ghostscript on it
        raise ImageError("EPS/PostScript is not decoded (it would run Ghostscript): convert it to PNG first")
    width, height = image.size
    rule = options.rule
    big_jpeg = image.format in ("JPEG", "MPO") and min(image.size) >= 2 * short_side
    if big_jpeg and (rule.reduced_scale or width * height > options.max_pixels):
        image.draft(image.mode, _draft_size(image.size, short_side))
    if image.width * image.height > pixel_limit(image.format, options):
        _check_pixels(image, (width, height), options)
    deferred = (
        config is not None
        and image.mode == "RGB"
        and uses_torch_resize(image.size, config, rule.torch_at_any_downscale)
    )
    if deferred and image.format in ("JPEG", "MPO"):
        torch_resize.decode_into_one_block(image)
    with _truncated_images_allowed(options.allow_truncated):
        image.load()  # the first frame or page only
    _check_pixels(image, image.size, options, "once decoded (more than its header said) ")
    if deferred and image.mode == "RGB":
        return image, torch_resize.exif_orientation(image)
    ImageOps.exif_transpose(image, in_place=True)  # in place: never two rotated copies
    return to_rgb(image), 1


def _open(
    source: str | os.PathLike[str] | IO[bytes],
    options: DecodeOptions | None,
    short_side: int,
    config: PreprocessConfig | None = None,
) -> tuple[Image.Image, int]:
    options = options or DecodeOptions()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on odd files; failures are raised, not warned
            if isinstance(source, (str, os.PathLike)):
                with open_file(source) as fp, _identify(fp) as image:
                    return _decode(image, options, short_side, config)
            with _identify(source) as image:
                return _decode(image, options, short_side, config)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as exc:
        raise ImageError(_reason(exc)) from None
    except MemoryError:
        raise ImageError("not enough memory to decode this image; lower --max-pixels") from None
    except Exception as exc:
        raise ImageError(f"cannot decode image: {type(exc).__name__}: {exc}"[:300]) from None


def open_image(
    source: str | os.PathLike[str] | IO[bytes], options: DecodeOptions | None = None, *, short_side: int = 256
) -> Image.Image:
    """Open and fully decode an image as RGB with its EXIF orientation applied.

    JPEGs whose shorter side is at least twice ``short_side`` are decoded at reduced scale
    (libjpeg's DCT scaling, 1/2 to 1/8, keeping the shorter side above ``short_side``) unless
    ``options.mode`` is EXACT, and always when that is what brings a huge JPEG under
    ``options.max_pixels``. Every failure is an ImageError.
    """
    image, _ = _open(source, options, short_side)
    return image


# -- preprocessing -------------------------------------------------------------------------------


def resized_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """torchvision's Resize(int) output size (width, height): the shorter side becomes ``short_side``."""
    width, height = size
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def crop_source_box(size: tuple[int, int], config: PreprocessConfig) -> tuple[float, float, float, float]:
    """The region of an image of ``size`` that Resize -> CenterCrop keeps, in source pixels.

    Pillow centers output pixel x's filter at source x0 + (x + 0.5) * scale, with the same
    filter width for every pixel, so the center crop of the resized image is the resize of this
    box to the crop size: ``image.resize((crop, crop), box=crop_source_box(...))``. Same filter,
    same geometry; Pillow may run its two passes (rows, columns) in the other order for the box,
    so the 8-bit rounding between them can differ by a few levels.
    """
    new_width, new_height = resized_size(size, config.resize_size)
    crop = config.crop_size
    left = round((new_width - crop) / 2.0)
    top = round((new_height - crop) / 2.0)
    scale_x, scale_y = size[0] / new_width, size[1] / new_height
    return (
        left * scale_x,
        top * scale_y,
        min(float(size[0]), (left + crop) * scale_x),
        min(float(size[1]), (top + crop) * scale_y),
    )


def _shorter_side_resized(size: tuple[int, int], config: PreprocessConfig) -> tuple[int, int]:
    width, height = size
    short, long = min(width, height), max(width, height)
    new_short, new_long = config.resize_size, int(config.resize_size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _whole_resize(size: tuple[int, int], config: PreprocessConfig) -> bool:
    """Resize -> CenterCrop as torchvision does it, on the whole image: neither the elongated case
    (only the cropped box is resized) nor the padded one (the crop is larger than the image)."""
    resized = _shorter_side_resized(size, config)
    elongated = max(resized) > EXACT_ASPECT * config.resize_size and config.crop_size <= config.resize_size
    return not elongated and min(resized) >= config.crop_size


def uses_torch_resize(size: tuple[int, int], config: PreprocessConfig, fast: bool = False) -> bool:
    """Whether ``preprocess`` resizes an RGB image of ``size`` on torch's uint8 kernels
    (:mod:`imgclassify.decode.resize`) rather than with Pillow: bilinear or bicubic, the shorter
    side at least ``resize.TORCH_FACTOR`` times the resize size (``fast``: larger than it), the
    whole image resized. Else Pillow, torchvision's exact pixels."""
    return _whole_resize(size, config) and torch_resize.torch_resize_applies(size, config, fast=fast)


def _torch_preprocess(image: Image.Image, config: PreprocessConfig, orientation: int) -> torch.Tensor | None:
    """The resize on torch's kernels, the orientation, the crop; None when Pillow's storage of
    ``image`` cannot be viewed without a copy (then Pillow resizes it)."""
    import numpy as np
    import torch

    pixels = torch_resize.pixel_view(image)
    if pixels is None:
        return None
    turned = torch_resize.swaps_axes(orientation)
    width, height = (image.height, image.width) if turned else image.size  # as it is viewed
    size = _shorter_side_resized((width, height), config)
    stored = (size[1], size[0]) if turned else size
    resized = torch_resize.orient(
        torch_resize.resize(pixels, stored, config.interpolation, columns_first=turned), orientation
    )
    crop = config.crop_size
    top, left = round((size[1] - crop) / 2.0), round((size[0] - crop) / 2.0)
    return torch.from_numpy(np.ascontiguousarray(resized[top : top + crop, left : left + crop, :3])).permute(2, 0, 1)


def preprocess(
    image: Image.Image, config: PreprocessConfig, *, orientation: int = 1, fast: bool = False
) -> torch.Tensor:
    """Resize the shorter side, center-crop, return a uint8 CHW tensor (normalized later, per batch).

    Same arithmetic as torchvision's Resize -> CenterCrop -> ToTensor on a PIL image; the
    float conversion and mean/std normalization happen once per batch on the device. Importing
    torchvision costs about 1 s, so it is not used. Large images (``uses_torch_resize``: the
    shorter side at least 4x the resize size) resize on torch's uint8 antialiased kernels, 5-10x
    faster than Pillow and within a level of its pixels (:mod:`imgclassify.decode.resize`); the
    others with Pillow: torchvision's pixels exactly (a test compares). Images more elongated
    than EXACT_ASPECT (resized long side over 16 x the resize size) resize only the box the crop
    keeps (``crop_source_box``): the full resize of a 1 x 100,000 image would be
    25,600,000 x 256 pixels.

    ``orientation``: the EXIF orientation still to apply to ``image`` (1: it is upright), as
    ``ImageOps.exif_transpose`` would; ``fast`` (``--fast-decode``): torch's kernels at any downscale.
    """
    import numpy as np
    import torch

    viewed = image.size if not torch_resize.swaps_axes(orientation) else (image.height, image.width)
    if image.mode == "RGB" and uses_torch_resize(viewed, config, fast):
        tensor = _torch_preprocess(image, config, orientation)
        if tensor is not None:
            return tensor
    if orientation != 1:
        image = image.transpose(_TRANSPOSE[orientation])
    size = _shorter_side_resized(image.size, config)
    crop = config.crop_size
    resample = _RESAMPLE[config.interpolation.value]
    if max(size) > EXACT_ASPECT * config.resize_size and crop <= config.resize_size:
        image = image.resize((crop, crop), resample, box=crop_source_box(image.size, config))
    elif min(size) >= crop:
        if size != image.size:
            image = image.resize(size, resample)
        top, left = round((size[1] - crop) / 2.0), round((size[0] - crop) / 2.0)
        image = image.crop((left, top, left + crop, top + crop))
    else:  # torchvision pads a crop larger than the image: keep its code for that
        from torchvision.transforms import functional as F

        image = F.resize(image, config.resize_size, interpolation=F.InterpolationMode(config.interpolation.value))
        image = F.center_crop(image, [crop, crop])
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


#: ImageOps.exif_transpose's methods, by EXIF orientation
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def load_tensor(
    source: str | os.PathLike[str] | IO[bytes], config: PreprocessConfig, options: DecodeOptions | None = None
) -> torch.Tensor:
    """``open_image`` then ``preprocess``: a uint8 (3, crop, crop) tensor, or an ImageError.

    An image resized on torch's kernels is turned upright after the resize (``preprocess``'s
    ``orientation``), not before: the small result is turned, not the photo.
    """
    options = options or DecodeOptions()
    image, orientation = _open(source, options, config.resize_size, config)
    extra: dict[str, Any] = {"orientation": orientation} if orientation != 1 else {}
    if options.rule.torch_at_any_downscale:
        extra["fast"] = True
    try:
        return preprocess(image, config, **extra)  # preprocess(image, config) for upright exact decodes
    except Exception as exc:
        raise ImageError(f"cannot preprocess image: {type(exc).__name__}: {exc}"[:300]) from None
