"""Decode worker processes that die: only the files they held become error records.

A decoder can kill its process: the OS's out-of-memory killer, a crash inside a C decoder. With
decoding in worker processes (``--workers N``), torch's DataLoader then raises for the whole
run. :func:`batches_surviving_crashes` catches that, decodes the batches that were in flight
again one file at a time, each in a process of its own (so the file that kills its process is
known, and becomes an error record), and goes on with new workers for the rest. Order and
every other file's result are kept; nothing already yielded is decoded twice.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .loading import Batch, DecodedItem, Decoder, FileDataset, collate

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

log = logging.getLogger("imgclassify")

#: batches each worker decodes ahead (DataLoader's prefetch_factor)
PREFETCH = 4


def _is_worker_death(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and "DataLoader worker" in text and (
        "exited unexpectedly" in text or "killed by signal" in text
    )


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


def _decode_in_child(decoder: Decoder, path: str, conn: Connection) -> None:
    tensor, error = decoder.try_decode(path)
    conn.send((tensor.numpy() if tensor is not None else None, error))
    conn.close()


def decode_isolated(decoder: Decoder, index: int, path: str) -> DecodedItem:
    """Decode one file in a process of its own; if that process dies, an error record says how."""
    import torch

    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_decode_in_child, args=(decoder, path, send), daemon=True)
    process.start()
    send.close()
    try:
        array, error = receive.recv()
    except EOFError:  # the process died before it answered
        process.join()
        reason = _describe_exit(process.exitcode)
        return DecodedItem(index, None, f"the decoder crashed on this file (its process was {reason})")
    finally:
        receive.close()
    process.join()
    return DecodedItem(index, torch.from_numpy(array) if array is not None else None, error)


def _loader(paths: Sequence[str], decoder: Decoder, indices: list[int], batch_size: int, workers: int, pin: bool) -> Any:
    from torch.utils.data import DataLoader, Subset

    dataset: Any = FileDataset(paths, decoder)
    return DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin,
        prefetch_factor=PREFETCH,
    )


def batches_surviving_crashes(
    paths: Sequence[str], decoder: Decoder, *, batch_size: int, workers: int, pin_memory: bool = False
) -> Iterator[Batch]:
    """:class:`Batch` objects in input order, decoded by ``workers`` processes that may die."""
    remaining = list(range(len(paths)))
    while remaining:
        done = 0
        try:
            for batch in _loader(paths, decoder, remaining, batch_size, workers, pin_memory):
                done += len(batch.indices)
                yield batch
            return
        except RuntimeError as exc:
            if not _is_worker_death(exc):
                raise
            log.warning("a decode worker process died (%s): decoding its files again, one process each", exc)
        remaining = remaining[done:]
        # the batches in flight when the worker died: every worker held up to PREFETCH of them
        suspects, remaining = remaining[: workers * PREFETCH * batch_size], remaining[workers * PREFETCH * batch_size :]
        items = [decode_isolated(decoder, index, paths[index]) for index in suspects]
        for start in range(0, len(items), batch_size):
            batch = collate(items[start : start + batch_size])
            yield batch.pin_memory() if pin_memory else batch
