"""Loading: paths -> batches. Decoding one file is :class:`Decoder`; many, :func:`iter_batches`.

A :class:`Decoder` (:mod:`imgclassify.decode.decoder`) turns a path or bytes into the model's uint8 (3, crop, crop) tensor, or a
per-file error string: a bad file is data, never an exception. :func:`iter_batches` decodes
files (in worker processes when asked, :func:`default_workers` says how many) and yields
:class:`Batch` objects: the good tensors stacked, the failures by index, in input order.
Everything here pickles, so decoding can run in other processes or on other machines.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imgclassify.decode.decoder import Batch, DecodedItem, Decoder, FileDataset, collate
from imgclassify.errors import UsageError
from imgclassify.system.devices import Backend
from imgclassify.system.runtime import available_cores

if TYPE_CHECKING:
    import torch

#: images per forward pass when none is asked for (``-b``), by the type of the device the model
#: runs on: the one table (see :func:`default_batch_size`)
DEFAULT_BATCH_SIZES: dict[str, int] = {"cpu": 8, "cuda": 64, "mps": 8}


def default_batch_size(device_type: str) -> int:
    """Images per forward pass on a device of this type (cpu, cuda, mps) when none is asked for.

    CPU: 8, the batch every CPU number in the README's "Performance" was measured at.
    CUDA: 64, NOT measured on a GPU here: a conservative start from public numbers (timm's
    benchmarks run DenseNet-121 at batch 256; batch 8 leaves most of a GPU idle). A GPU too
    small for it runs out of memory once, and the backend's out-of-memory halving
    (backends/oom.py) keeps the size that fits. Measure a GPU with
    ``benchmarks/throughput.py --device cuda --batch-size N``. MPS: 8, as the CPU (nothing was
    measured there). Another device type gets the CPU's.
    """
    return DEFAULT_BATCH_SIZES.get(device_type, DEFAULT_BATCH_SIZES["cpu"])


def check_batch_size(batch_size: int | None, option: str = "--batch-size") -> None:
    """A batch size asked for is at least 1 (None: not asked for, the device's default)."""
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"{option} must be at least 1, got {batch_size}")


def resolve_batch_size(batch_size: int | None, device: str | torch.device, option: str = "--batch-size") -> int:
    """``batch_size`` when given (at least 1), else :func:`default_batch_size` for ``device``
    (the device the model runs on, resolved: ``"cuda:0"``, ``torch.device("cpu")``)."""
    check_batch_size(batch_size, option)
    if batch_size is None:
        return default_batch_size(str(device).partition(":")[0])
    return batch_size


def default_workers(
    num_images: int, batch_size: int, device_type: str = "cpu", backend: Backend = Backend.TORCH
) -> int:
    """Decoding processes beside the model, chosen by measurement (benchmarks/throughput.py).

    On a 2-core CPU torch's forward pass already uses both cores and a decode process only adds
    contention (DenseNet-121 fp32: 30.7 images/s decoding in-process, 28.8 with one worker), so
    small machines decode in-process. OpenVINO leaves more room: one decode process gave 83.9
    against 73.3 images/s (bf16). GPUs leave the CPU to decoding: use most of its cores.
    """
    if num_images <= batch_size:
        return 0
    cores = available_cores()
    if device_type == "cuda":
        return max(1, min(8, cores - 1))
    if backend is Backend.OPENVINO:
        return max(1, cores // 2)
    return 0 if cores <= 2 else max(1, cores // 4)


def default_threads(num_images: int, batch_size: int, workers: int) -> int:
    """Decode threads in the main process when it decodes (``workers == 0``): one per core, at most 4.

    Pillow releases the GIL while it decodes and resizes, and torch and OpenVINO release it in
    the forward pass, so threads decode the next batches while the model runs on this one, with
    no process start-up and no copies between processes. ``IMGCLASSIFY_DECODE_THREADS=N`` sets
    the count (0: decode in the loop itself, as before). Runs of one batch decode in the loop.
    """
    if workers or num_images <= batch_size:
        return 0
    env = os.environ.get("IMGCLASSIFY_DECODE_THREADS", "").strip()
    if env.isdigit():
        return int(env)
    return min(4, available_cores())


def _threaded_batches(paths: Sequence[str], decoder: Decoder, batch_size: int, threads: int) -> Iterator[Batch]:
    """Batches in order, decoded by ``threads`` threads at most two batches ahead (memory stays bounded)."""
    from concurrent.futures import ThreadPoolExecutor
    from itertools import islice

    from imgclassify.system.parallel import ordered_map

    dataset = FileDataset(paths, decoder)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="imgclassify-decode")
    # the window keeps decoding going during the forward pass on the batch just yielded
    decoded = ordered_map(dataset.__getitem__, range(len(paths)), executor=pool, window=2 * batch_size + threads)
    try:
        while items := list(islice(decoded, batch_size)):
            yield collate(items)
    finally:
        decoded.close()
        pool.shutdown(wait=True, cancel_futures=True)


def iter_batches(
    paths: Sequence[str],
    decoder: Decoder,
    *,
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
    threads: int | None = None,
) -> Iterator[Batch]:
    """Decode ``paths`` into batches of ``batch_size``, in order; ``workers`` processes (0: here).

    In this process (``workers == 0``) ``threads`` decode ahead (None: :func:`default_threads`).
    """
    if threads is None:
        threads = default_threads(len(paths), batch_size, workers)
    if workers == 0 and threads > 0:
        for batch in _threaded_batches(paths, decoder, batch_size, threads):
            yield batch.pin_memory() if pin_memory else batch
        return
    if workers == 0:
        for start in range(0, len(paths), batch_size):
            items = [
                DecodedItem(i, *decoder.try_decode(paths[i])) for i in range(start, min(start + batch_size, len(paths)))
            ]
            batch = collate(items)
            yield batch.pin_memory() if pin_memory else batch
        return
    from imgclassify.decode.worker_crashes import batches_surviving_crashes

    # worker processes: one that dies (out of memory, a crash inside a C decoder) costs only its files
    yield from batches_surviving_crashes(paths, decoder, batch_size=batch_size, workers=workers, pin_memory=pin_memory)


# -- bytes only (GPU decoding): workers read files, the decoding happens on the device ----------


@dataclass
class RawBatch:
    """Files' bytes in input order; ``None`` where a file could not be read (its decoder says why)."""

    indices: list[int]
    data: list[bytes | None]


class BytesDataset:
    """Map-style dataset over paths that only reads each file's bytes (GPU decoding)."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, bytes | None]:
        try:
            with open(self.paths[index], "rb") as stream:
                return index, stream.read()
        except OSError:
            return index, None


def collate_raw(items: list[tuple[int, bytes | None]]) -> RawBatch:
    return RawBatch([index for index, _ in items], [data for _, data in items])


def iter_raw_batches(paths: Sequence[str], *, batch_size: int, workers: int) -> Iterator[RawBatch]:
    """Read ``paths`` into batches of bytes, in order; ``workers`` processes (0: here)."""
    from torch.utils.data import DataLoader

    loader: DataLoader[Any] = DataLoader(
        BytesDataset(paths),  # type: ignore[arg-type]
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_raw,
        prefetch_factor=4 if workers else None,
    )
    yield from loader
