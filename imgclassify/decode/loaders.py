"""Which loader feeds the model: CPU decoding (Pillow in worker processes) or GPU decoding.

:func:`choose_loader` is the decision, a pure function of the device and what was probed;
:func:`open_batches` runs the chosen one. On CUDA with working nvJPEG, worker processes only
read bytes and JPEGs are decoded on the GPU (:mod:`imgclassify.decode.gpu`); everywhere else
the CPU loader of :mod:`imgclassify.decode.loading` decodes, pinning its batches for CUDA only.
``IMGCLASSIFY_GPU_DECODE=0`` keeps CUDA runs on CPU decoding. Inputs with URLs among them
(``s3://``, ``https://``) are read ahead by threads of their own and decoded on the CPU
(:mod:`imgclassify.decode.fetching`).

Importing this module does not import torch.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from imgclassify.decode.decoder import Batch, Decoder
from imgclassify.decode.loading import iter_batches

if TYPE_CHECKING:
    import torch

    from imgclassify.system.storage import Storage

GPU_DECODE_ENV = "IMGCLASSIFY_GPU_DECODE"


class LoaderKind(str, enum.Enum):
    CPU_DECODE = "cpu-decode"
    GPU_DECODE = "gpu-decode"


def gpu_decode_allowed(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(GPU_DECODE_ENV, "").strip().lower() not in ("0", "false", "no", "off")


def choose_loader(
    device: torch.device, *, nvjpeg_works: Callable[[torch.device], bool], environ: Mapping[str, str] | None = None
) -> LoaderKind:
    """GPU decoding on CUDA when nvJPEG works there and it is not turned off; else CPU decoding."""
    if device.type == "cuda" and gpu_decode_allowed(environ) and nvjpeg_works(device):
        return LoaderKind.GPU_DECODE
    return LoaderKind.CPU_DECODE


def pin_memory_for(device: torch.device) -> bool:
    """Page-locked host batches (for non-blocking copies) only where they help: CUDA."""
    return device.type == "cuda"


def open_batches(
    paths: Sequence[str],
    decoder: Decoder,
    device: torch.device,
    *,
    batch_size: int,
    workers: int,
    storage: Storage | None = None,
) -> Iterator[Batch]:
    """Batches for ``paths`` from the loader :func:`choose_loader` picks for ``device``.

    With URLs among ``paths``: read by ``storage`` (None: each filesystem's own configuration)
    ahead of the model, decoded by ``workers`` threads (0: as many as local files get).
    """
    from imgclassify.system.storage import is_url

    if any(is_url(path) for path in paths):
        from imgclassify.decode.fetching import iter_fetched_batches
        from imgclassify.decode.loading import default_threads
        from imgclassify.system.storage import Storage

        threads = workers or default_threads(len(paths), batch_size, 0)
        return iter_fetched_batches(
            paths, decoder, storage or Storage(), batch_size=batch_size, threads=threads,
            pin_memory=pin_memory_for(device),
        )  # fmt: skip
    from imgclassify.decode.gpu import GpuBatchDecoder, gpu_decoding_available, iter_gpu_batches

    if choose_loader(device, nvjpeg_works=gpu_decoding_available) is LoaderKind.GPU_DECODE:
        gpu = GpuBatchDecoder(decoder, device)
        return iter_gpu_batches(paths, gpu, batch_size=batch_size, workers=workers)
    return iter_batches(paths, decoder, batch_size=batch_size, workers=workers, pin_memory=pin_memory_for(device))
