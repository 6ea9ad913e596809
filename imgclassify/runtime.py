"""Process-level speed settings: the allocator, CPU threads. Each applied once, measured in
``benchmarks/throughput.py``.

glibc's malloc returns the forward pass's large buffers to the kernel after every batch
(mmap/munmap, page faults); raising its mmap and trim thresholds keeps them for reuse:
DenseNet-121 fp32 on a 2-core Xeon went from 31.7 to 38.8 images/s (channels_last), bf16 from
62.9 to 79.2. Set ``IMGCLASSIFY_NO_MALLOPT=1`` to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger("imgclassify")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 512 * 1024 * 1024  # glibc's documented upper bound on 64-bit (HEAP_MAX/2 = 32 MiB is the dynamic max)
_TRIM_THRESHOLD = 1024 * 1024 * 1024

_applied = False


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def tune_allocator() -> bool:
    """Raise glibc malloc's mmap/trim thresholds once per process. True when applied."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("IMGCLASSIFY_NO_MALLOPT"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, or no libc found
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    _applied = ok
    return ok


def configure_threads() -> None:
    """Never more intra-op threads than the cores this process may run on."""
    import torch

    cores = available_cores()
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)


def configure_process() -> None:
    """The process-wide speed settings, applied once by an entry point (the CLI, a server worker)."""
    tune_allocator()
    configure_threads()
