"""Process-level speed settings: the allocator, CPU threads. Each applied once, measured in
``benchmarks/throughput.py``.

glibc's malloc returns the forward pass's large buffers to the kernel after every batch
(mmap/munmap, page faults); raising its mmap and trim thresholds keeps them for reuse:
DenseNet-121 fp32 on a 2-core Xeon went from 31.7 to 38.8 images/s (channels_last), bf16 from
62.9 to 79.2. Set ``IMGCLASSIFY_NO_MALLOPT=1`` to leave the allocator alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys
import threading
from typing import NoReturn

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


def exit_process(code: int) -> NoReturn:
    """End an entry point's process with ``code``, without torch's teardown when nothing needs it.

    A process that imported torch spends about 0.5 s in the interpreter's teardown (measured on
    a 2-core EPYC: ``python -c "import torch"`` 1.74 s, 1.28 s ending with ``os._exit``), a
    third of a one-image run. When the command is done (every output written and closed, no
    thread or child process still running), the exit handlers run (``atexit``: temporary
    directories, Ray, logging), the standard streams are flushed, and the process ends with
    ``os._exit``. Otherwise, and when torch was never imported, the interpreter exits normally.
    """
    import atexit

    _flush_stdio()
    if "torch" not in sys.modules or _still_running():
        raise SystemExit(code)
    atexit._run_exitfuncs()
    _flush_stdio()
    os._exit(code)


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can be written
            stream.flush()


def _still_running() -> bool:
    """A thread that would be joined at exit, or a child process, is still there."""
    main = threading.main_thread()
    if any(t is not main and t.is_alive() and not t.daemon for t in threading.enumerate()):
        return True
    multiprocessing = sys.modules.get("multiprocessing")
    return bool(multiprocessing is not None and multiprocessing.active_children())
