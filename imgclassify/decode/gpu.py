"""GPU decoding: JPEG bytes -> uint8 (3, crop, crop) tensors on the device, nvJPEG in batches.

The pieces, each usable (and tested) without a GPU:

- :func:`read_header`: what Pillow learns from a file's header alone (no pixels decoded).
- :func:`needs_cpu_decode`: the fallback policy, a pure function of the header: which files
  nvJPEG is not given (not a JPEG, CMYK, odd chroma sampling, progressive, too many pixels,
  reduced-scale decoding: the default for JPEGs of at least twice the resize size, no
  end-of-image marker) and why.
- :func:`orient`: EXIF orientation applied to a decoded CHW tensor, as Pillow's
  ``ImageOps.exif_transpose`` does on the CPU path.
- :func:`resize_crop`: shorter side resized (antialiased bilinear/bicubic) and center-cropped
  with the CPU path's sizes, in float on whatever device the tensor is on.
- :class:`GpuBatchDecoder`: a batch of (path, bytes) -> uint8 NCHW on the device plus
  per-index errors. Files the policy refuses, and files nvJPEG fails on, are decoded by the CPU
  :class:`~imgclassify.decode.decoder.Decoder`, one by one, never failing the batch.
- :func:`iter_gpu_batches`: paths -> :class:`~imgclassify.decode.loading.Batch` with the tensor on
  the device; worker processes only read bytes, decoding runs one batch ahead in a thread on a
  side CUDA stream so it overlaps the forward pass.

Importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import io
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from imgclassify.decode.decoder import Batch, Decoder
from imgclassify.decode.imaging import DecodeOptions
from imgclassify.decode.loading import iter_raw_batches
from imgclassify.decode.preprocess import Interpolation, PreprocessConfig

if TYPE_CHECKING:
    import torch

log = logging.getLogger("imgclassify")

T = TypeVar("T")

#: Pillow's names for the JPEG chroma samplings nvJPEG decodes (4:4:4, 4:2:2, 4:2:0)
_GPU_SAMPLINGS = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}
#: decoded pixels per nvJPEG call: bounds the device memory a batch of camera photos takes
DEFAULT_PIXEL_BUDGET = 256 * 1024 * 1024
#: the EXIF orientation tag
_ORIENTATION = 0x0112


@dataclass(frozen=True)
class JpegHeader:
    """What the header says, read without decoding pixels. ``format`` None: Pillow cannot read it."""

    format: str | None
    mode: str = ""
    width: int = 0
    height: int = 0
    #: Pillow's JPEG sampling code: 0 4:4:4, 1 4:2:2, 2 4:2:0, -1 anything else (None: not a JPEG)
    sampling: int | None = None
    progressive: bool = False
    #: EXIF orientation, 1 (none) to 8
    orientation: int = 1
    #: the data ends with the JPEG end-of-image marker (FFD9), trailing zero bytes aside
    complete: bool = True

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(data: bytes) -> JpegHeader:
    """The header of an image in ``data`` (Pillow's ``Image.open`` reads only the header)."""
    from PIL import Image, JpegImagePlugin

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG":
                return JpegHeader(format=image.format, mode=image.mode, width=image.width, height=image.height)
            try:
                orientation = int(image.getexif().get(_ORIENTATION, 1))
            except Exception:  # a broken EXIF block: the CPU path ignores it the same way
                orientation = 1
            return JpegHeader(
                format="JPEG", mode=image.mode, width=image.width, height=image.height,
                sampling=JpegImagePlugin.get_sampling(image),
                progressive=bool(image.info.get("progressive") or image.info.get("progression")),
                orientation=orientation if 1 <= orientation <= 8 else 1,
                complete=data.rstrip(b"\0").endswith(b"\xff\xd9"),
            )  # fmt: skip
    except Exception:
        return JpegHeader(format=None)


def needs_cpu_decode(header: JpegHeader, preprocess: PreprocessConfig, options: DecodeOptions) -> str | None:
    """Why this file goes to the CPU decoder instead of nvJPEG, or None: nvJPEG takes it.

    Conservative by design: a file nvJPEG might decode differently from libjpeg (CMYK, whose
    Adobe inversion Pillow handles; odd samplings; progressive scans, which take nvJPEG's
    slower hybrid path) is decoded on the CPU, like every non-JPEG and every unreadable file.
    Huge JPEGs go to the CPU path's reduced-scale decoding, so a decoded image never holds more
    than ``--max-pixels`` pixels on the GPU; so do JPEGs of at least twice the resize size unless
    ``--exact-decode`` (the decode mode's ``reduced_scale``), so that a file gets the same pixels
    on either path.
    """
    if header.format is None:
        return "unreadable header"
    if header.format != "JPEG":
        return f"not a JPEG ({header.format})"
    if header.mode not in ("RGB", "L"):
        return f"{header.mode} JPEG"
    if header.mode == "RGB" and header.sampling not in _GPU_SAMPLINGS:
        return "chroma sampling other than 4:4:4, 4:2:2 or 4:2:0"
    if header.progressive:
        return "progressive JPEG"
    if not header.complete:
        return "no end-of-image marker (truncated?)"
    big = min(header.width, header.height) >= 2 * preprocess.resize_size
    if header.pixels > options.max_pixels:
        return "more pixels than --max-pixels: reduced-scale decoding"
    if big and options.rule.reduced_scale:
        option = options.rule.option
        return f"{option}: reduced-scale decoding" if option else "reduced-scale decoding (--exact-decode: nvJPEG)"
    return None


# -- tensor math (any device) -------------------------------------------------------------------


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply EXIF ``orientation`` (1-8) to a (C, H, W) tensor, as ``ImageOps.exif_transpose``."""
    import torch

    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-1, -2)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:  # transpose
        return image.transpose(-1, -2)
    if orientation == 6:  # rotate 270 (clockwise 90)
        return torch.rot90(image, k=-1, dims=(-2, -1))
    if orientation == 7:  # transverse
        return image.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:  # rotate 90 (counter-clockwise)
        return torch.rot90(image, k=1, dims=(-2, -1))
    return image


def resized_size(height: int, width: int, resize: int) -> tuple[int, int]:
    """(height, width) with the shorter side ``resize``: torchvision's ``Resize(int)`` rule."""
    if width <= height:
        return int(resize * height / width), resize
    return resize, int(resize * width / height)


def resize_crop(image: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, crop, crop): antialiased resize of the shorter side, center crop.

    The arithmetic of the CPU path (Pillow's resize through torchvision, then ``center_crop``)
    in float32 with ``interpolate(antialias=True)``, one axis at a time with rounding between
    the passes as Pillow does, rounded back to uint8.
    """
    import torch
    from torch.nn import functional as F

    _, height, width = image.shape
    new_h, new_w = resized_size(height, width, config.resize_size)
    x = image.unsqueeze(0).float()
    if config.interpolation is Interpolation.NEAREST:
        if (new_h, new_w) != (height, width):
            x = F.interpolate(x, size=(new_h, new_w), mode="nearest-exact")
    else:
        # Pillow resamples horizontally, rounds to uint8, then vertically: two passes, as here
        mode = config.interpolation.value
        if new_w != width:
            x = F.interpolate(x, size=(height, new_w), mode=mode, antialias=True, align_corners=False)
            x = x.round_().clamp_(0, 255)
        if new_h != height:
            x = F.interpolate(x, size=(new_h, new_w), mode=mode, antialias=True, align_corners=False)
    crop = config.crop_size
    if crop > min(new_h, new_w):  # as center_crop: pad with zeros first
        pad_h, pad_w = max(crop - new_h, 0), max(crop - new_w, 0)
        x = F.pad(x, [pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2])
        new_h, new_w = x.shape[-2:]
    top = round((new_h - crop) / 2.0)
    left = round((new_w - crop) / 2.0)
    x = x[0, :, top : top + crop, left : left + crop]
    return x.round_().clamp_(0, 255).to(torch.uint8)


def chunks_by_pixels(pixels: Sequence[int], budget: int) -> list[list[int]]:
    """Positions grouped in order so each group decodes at most ``budget`` pixels (one image at least)."""
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for position, count in enumerate(pixels):
        if current and total + count > budget:
            groups.append(current)
            current, total = [], 0
        current.append(position)
        total += count
    if current:
        groups.append(current)
    return groups


# -- the decoder --------------------------------------------------------------------------------

JpegDecodeFn = Callable[[list["torch.Tensor"], "torch.device"], list["torch.Tensor"]]


def nvjpeg_decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """torchvision's batched ``decode_jpeg`` to RGB on ``device`` (nvJPEG for cuda, libjpeg for cpu)."""
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of TorchCodec
        warnings.simplefilter("ignore", DeprecationWarning)
        out = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return out if isinstance(out, list) else [out]


@dataclass
class GpuBatchDecoder:
    """Batches of (path, bytes) -> uint8 NCHW on ``device`` plus per-index errors.

    ``decode_jpeg`` is the batched JPEG decoder (nvJPEG by default; the tests run the whole path
    on the CPU with libjpeg in its place). ``cpu`` decodes whatever nvJPEG is not given or fails
    on; ``fallbacks`` counts those by reason.
    """

    cpu: Decoder
    device: torch.device
    decode_jpeg: JpegDecodeFn = nvjpeg_decode
    pixel_budget: int = DEFAULT_PIXEL_BUDGET

    def __post_init__(self) -> None:
        self.fallbacks: dict[str, int] = {}

    def __call__(self, items: Sequence[tuple[str, bytes | None]]) -> tuple[torch.Tensor | None, dict[int, str]]:
        """Rows for the items without an error, in order, and ``{position: error}`` for the rest."""
        import torch

        results: list[torch.Tensor | None] = [None] * len(items)
        errors: dict[int, str] = {}
        headers: dict[int, JpegHeader] = {}
        for position, (path, data) in enumerate(items):
            reason = "unreadable file" if not data else None
            if data:
                header = read_header(data)
                reason = needs_cpu_decode(header, self.cpu.preprocess, self.cpu.options)
                if reason is None:
                    headers[position] = header
            if reason is not None:
                self._on_cpu(position, path, data, reason, results, errors)
        positions = list(headers)
        for group in chunks_by_pixels([headers[p].pixels for p in positions], self.pixel_budget):
            chosen = [positions[g] for g in group]
            decoded = self._decode_group([items[p][1] for p in chosen])  # type: ignore[misc]
            for position, image in zip(chosen, decoded, strict=True):
                if image is None:
                    self._on_cpu(position, items[position][0], items[position][1], "nvJPEG failed", results, errors)
                else:
                    image = orient(image, headers[position].orientation)
                    results[position] = resize_crop(image, self.cpu.preprocess)
        good = [t for t in results if t is not None]
        return (torch.stack(good) if good else None), errors

    def _decode_group(self, datas: list[bytes]) -> list[torch.Tensor | None]:
        import torch

        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        try:
            return list(self.decode_jpeg(tensors, self.device))
        except Exception:  # the batched call returns nothing on any error: find the culprits one by one
            if len(tensors) == 1:
                return [None]
            single: list[torch.Tensor | None] = []
            for tensor in tensors:
                try:
                    single.append(self.decode_jpeg([tensor], self.device)[0])
                except Exception:
                    single.append(None)
            return single

    def _on_cpu(
        self,
        position: int,
        path: str,
        data: bytes | None,
        reason: str,
        results: list[torch.Tensor | None],
        errors: dict[int, str],
    ) -> None:
        self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1
        tensor, error = self.cpu.try_decode(path if data is None else data)  # b"": the CPU path's error
        if tensor is None:
            errors[position] = error or "cannot decode image"
        else:
            if self.device.type == "cuda":
                tensor = tensor.pin_memory()
            results[position] = tensor.to(self.device, non_blocking=True)


# -- the loader ---------------------------------------------------------------------------------


def gpu_decoding_available(device: torch.device) -> bool:
    """nvJPEG through torchvision works on ``device`` (decodes a tiny JPEG there); False off CUDA."""
    if device.type != "cuda":
        return False
    try:
        import torch
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format="JPEG")
        out = nvjpeg_decode([torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)], device)
        return bool(out[0].shape == (3, 16, 16) and out[0].device.type == "cuda")
    except Exception as exc:
        log.warning("GPU JPEG decoding is unavailable (%s): decoding on the CPU instead", exc)
        return False


def prefetch(iterator: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Run ``iterator`` in a thread, at most ``depth`` items ahead; items and errors in order."""
    done = object()
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        slots.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put((done, None))
        except BaseException as exc:
            slots.put((done, exc))

    thread = threading.Thread(target=produce, name="imgclassify-gpu-decode", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # let a blocked producer see the stop
            with contextlib.suppress(queue.Empty):
                slots.get(timeout=0.1)
            thread.join(timeout=0.1)


def iter_gpu_batches(
    paths: Sequence[str], decoder: GpuBatchDecoder, *, batch_size: int, workers: int
) -> Iterator[Batch]:
    """Batches with the tensor already on ``decoder.device``: workers read bytes, this decodes.

    On CUDA, decoding runs one batch ahead in a thread, on its own stream, so it overlaps the
    forward pass of the batch before; each batch is complete on the device when handed over.
    """
    import torch

    cuda = decoder.device.type == "cuda"

    def decode_all() -> Iterator[Batch]:
        stream = torch.cuda.Stream(decoder.device) if cuda else None  # type: ignore[no-untyped-call]
        for raw in iter_raw_batches(paths, batch_size=batch_size, workers=workers):
            items = [(paths[i], data) for i, data in zip(raw.indices, raw.data, strict=True)]
            if stream is not None:
                with torch.cuda.stream(stream):
                    tensor, errors = decoder(items)
                stream.synchronize()
            else:
                tensor, errors = decoder(items)
            yield Batch(raw.indices, tensor, {raw.indices[p]: e for p, e in errors.items()})

    if not cuda:
        yield from decode_all()
        return
    for batch in prefetch(decode_all()):
        if batch.tensor is not None:  # used on the main stream now: keep the allocator from reusing it early
            batch.tensor.record_stream(torch.cuda.current_stream(decoder.device))
        yield batch
