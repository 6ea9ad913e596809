"""The resize on torch's uint8 antialiased kernels, on Pillow's pixels without a copy.

torch's ``interpolate(..., antialias=True)`` on a uint8 channels-last tensor runs AVX2 kernels
ported from Pillow-SIMD: Pillow's filters and geometry, two passes (rows, then columns) rounded
to uint8 in between, but with 16-bit fixed-point weights where Pillow's have 22 bits, so a value
may end a level apart (docs/performance.md, "Resize on torch's uint8 kernels": on 12 MP
photos 0.03-0.14% of the values, none 2 apart; top-1 unchanged). It is 6-9x faster on large
photos (a 12 MP photo to 256 on one core: Pillow 110 ms bicubic, torch 12). The exact path
takes it when the shorter side is at least :data:`TORCH_FACTOR` times the resize size (1024 px
for 256: photos of a megapixel and more); under that Pillow's resize costs under 10 ms and
keeps torchvision's pixels exactly (ImageNet-sized and web photos, and the outputs recorded for
them). ``--fast-decode``, whose pixels differ from the exact decode anyway, takes it at any
downscale (within 2 levels of Pillow's resize of the same decoded pixels).

The pixels are read where Pillow decoded them: Pillow stores RGB as RGBX, 4 bytes a pixel, and
exports an image held in one memory block through the Arrow C data interface; that is viewed
as an (H, W, 4) array (:func:`pixel_view`), a channels-last NCHW tensor of 4 channels, which
the kernel takes without repacking. Large RGB JPEGs are decoded into one block
(:func:`decode_into_one_block`); Pillow's default storage for an image over 16 MB is a chain of
blocks, which cannot be viewed, and such images (16-bit, grayscale, alpha, converted to RGB
tile by tile) resize with Pillow as before.

EXIF orientation is applied after the resize, to the small result (:func:`orient`); for a
quarter turn the passes run columns first, so that each pass is the one Pillow runs on the
turned image.

The kernel runs on the calling thread (no intra-op threads): decode threads and processes do
not oversubscribe the cores. It is torch's AVX2 code, used where torch dispatches to it
(:func:`fast_kernels`); elsewhere Pillow resizes everything, as before. Importing this module
imports neither torch nor numpy.
"""

from __future__ import annotations

import ctypes
import functools
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageFile

from imgclassify.decode.preprocess import Interpolation, PreprocessConfig

if TYPE_CHECKING:
    import numpy as np

#: the exact path resizes on torch's kernels when the shorter side is at least this many times the resize size
TORCH_FACTOR = 4
#: the interpolations torch's uint8 antialiased kernels have (nearest stays with Pillow)
TORCH_MODES = (Interpolation.BILINEAR, Interpolation.BICUBIC)
#: EXIF Orientation tag
ORIENTATION = 0x0112
#: images whose storage is larger than this are never decoded into one block (Pillow's own limit)
_MAX_BLOCK_BYTES = 2**31 - 1


@functools.cache
def fast_kernels() -> bool:
    """Whether torch's AVX2 uint8 kernels run here (its CPU dispatch is AVX2 or AVX-512). Elsewhere
    (ARM, x86 without AVX2, ``ATEN_CPU_CAPABILITY=default``) torch's generic kernel is no faster
    than Pillow (measured: 95 ms for a 12 MP photo, bicubic) and runs intra-op threads."""
    import torch

    try:
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    except (AttributeError, RuntimeError):
        return False


def torch_resize_applies(size: tuple[int, int], config: PreprocessConfig, *, fast: bool = False) -> bool:
    """Whether an RGB image of ``size`` (width, height) is resized on torch's kernels.

    Bilinear and bicubic only, where torch's fast kernels run (:func:`fast_kernels`); the exact
    path when the shorter side is at least TORCH_FACTOR times the resize size, ``fast``
    (``--fast-decode``) whenever the image is made smaller.
    """
    if config.interpolation not in TORCH_MODES:
        return False
    short = min(size)
    big_enough = short >= TORCH_FACTOR * config.resize_size if not fast else short > config.resize_size
    return big_enough and fast_kernels()


class _ArrowArray(ctypes.Structure):
    pass


_ArrowArray._fields_ = [
    ("length", ctypes.c_int64),
    ("null_count", ctypes.c_int64),
    ("offset", ctypes.c_int64),
    ("n_buffers", ctypes.c_int64),
    ("n_children", ctypes.c_int64),
    ("buffers", ctypes.POINTER(ctypes.c_void_p)),
    ("children", ctypes.POINTER(ctypes.POINTER(_ArrowArray))),
    ("dictionary", ctypes.c_void_p),
    ("release", ctypes.c_void_p),
    ("private_data", ctypes.c_void_p),
]


class _ArrowSchema(ctypes.Structure):
    pass


_ArrowSchema._fields_ = [
    ("format", ctypes.c_char_p),
    ("name", ctypes.c_char_p),
    ("metadata", ctypes.c_char_p),
    ("flags", ctypes.c_int64),
    ("n_children", ctypes.c_int64),
    ("children", ctypes.POINTER(ctypes.POINTER(_ArrowSchema))),
    ("dictionary", ctypes.c_void_p),
    ("release", ctypes.c_void_p),
    ("private_data", ctypes.c_void_p),
]

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


class _Pixels:
    """Pillow's exported RGBX pixels as numpy's array interface; holds the export (and so the pixels)."""

    def __init__(self, capsules: tuple[Any, Any], address: int, width: int, height: int) -> None:
        self._capsules = capsules  # released (Pillow's reference dropped) when this object goes
        self.__array_interface__ = {
            "version": 3,
            "data": (address, False),
            "shape": (height, width, 4),
            "typestr": "|u1",
        }


def pixel_view(image: Image.Image) -> np.ndarray | None:
    """A zero-copy (H, W, 4) uint8 view of an RGB image's pixels (RGBX), or None when Pillow
    cannot export them in one piece (storage in several blocks, another mode). Read only."""
    import numpy as np

    if image.mode != "RGB" or image.width == 0 or image.height == 0:
        return None
    try:
        capsules = image.__arrow_c_array__()
    except (ValueError, AttributeError, OSError):  # several blocks; Pillow before 11.2
        return None
    schema = _ArrowSchema.from_address(_capsule_pointer(capsules[0], b"arrow_schema"))
    array = _ArrowArray.from_address(_capsule_pointer(capsules[1], b"arrow_array"))
    pixels = image.width * image.height
    if schema.format != b"+w:4" or schema.n_children != 1 or schema.children[0].contents.format != b"C":
        return None
    if array.length != pixels or array.n_children != 1 or array.offset != 0:
        return None
    child = array.children[0].contents
    if child.length != 4 * pixels or child.n_buffers != 2 or not child.buffers[1]:
        return None
    address = child.buffers[1] + child.offset
    view: np.ndarray = np.asarray(_Pixels(capsules, address, image.width, image.height))
    return view


def decode_into_one_block(image: ImageFile.ImageFile) -> None:
    """Before ``image.load()``: have Pillow decode into one memory block, so that
    :func:`pixel_view` can see the pixels (only where nothing else would: RGB, over 16 MB)."""
    size = image.width * image.height * 4
    if image.mode != "RGB" or getattr(image, "_im", None) is not None:  # Pillow's load_prepare reads _im too
        return
    core: Any = Image.core  # type: ignore[attr-defined]
    if size <= core.get_block_size() or size > _MAX_BLOCK_BYTES:  # one block already / too large for one
        return
    try:
        image.im = core.new_block(image.mode, image.size)
    except (MemoryError, ValueError, AttributeError):
        return


def resize(
    pixels: np.ndarray, size: tuple[int, int], interpolation: Interpolation, *, columns_first: bool = False
) -> np.ndarray:
    """(H, W, 4) uint8 -> (height, width, 4) uint8 for ``size`` (width, height): torch's uint8
    antialiased resize, rows then columns (``columns_first``: columns then rows)."""
    import torch
    from torch.nn import functional as F

    x = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)  # NCHW view, channels-last memory
    width, height = size
    mode = interpolation.value
    if columns_first and x.shape[2] != height:
        x = F.interpolate(x, size=(height, x.shape[3]), mode=mode, antialias=True, align_corners=False)
    if x.shape[2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode=mode, antialias=True, align_corners=False)
    if x.dtype != torch.uint8:  # the fast kernels are uint8 only: never let a conversion slip in
        raise TypeError(f"torch's resize returned {x.dtype}, not uint8")
    out: np.ndarray = x[0].permute(1, 2, 0).numpy()
    return out


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """An (H, W, C) array turned as Pillow's ``exif_transpose`` turns an image with this EXIF
    orientation (a view)."""
    if orientation == 2:  # FLIP_LEFT_RIGHT
        return pixels[:, ::-1]
    if orientation == 3:  # ROTATE_180
        return pixels[::-1, ::-1]
    if orientation == 4:  # FLIP_TOP_BOTTOM
        return pixels[::-1]
    if orientation == 5:  # TRANSPOSE
        return pixels.transpose(1, 0, 2)
    if orientation == 6:  # ROTATE_270 (90 degrees clockwise)
        return pixels.transpose(1, 0, 2)[:, ::-1]
    if orientation == 7:  # TRANSVERSE
        return pixels[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:  # ROTATE_90 (counter-clockwise)
        return pixels.transpose(1, 0, 2)[::-1]
    return pixels


def swaps_axes(orientation: int) -> bool:
    return orientation in (5, 6, 7, 8)


def exif_orientation(image: Image.Image) -> int:
    """The orientation ``ImageOps.exif_transpose`` would apply (1 when none, or an unknown value)."""
    value = image.getexif().get(ORIENTATION, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1
