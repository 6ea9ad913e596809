"""Decode worker processes that die: only the files they held become error records.

A decoder can kill its process: the OS's out-of-memory killer, a crash inside a C decoder. With
torch's DataLoader that ends the whole run (its SIGCHLD handler raises wherever the main
thread happens to be). :func:`batches_surviving_crashes` decodes in a process pool instead;
when a worker dies it decodes the batches that were in flight again one file at a time, each
in a process of its own (so the file that kills its process is known, and becomes an error
record), and goes on with a new pool for the rest. Order and
every other file's result are kept; nothing already yielded is decoded twice.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from imgclassify.decode.decoder import Batch, DecodedItem, Decoder, collate

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

log = logging.getLogger("imgclassify")

#: batches each worker decodes ahead (DataLoader's prefetch_factor)
PREFETCH = 4


def _is_worker_death(exc: BaseException) -> bool:
    text = str(exc)
    return (
        isinstance(exc, RuntimeError)
        and "DataLoader worker" in text
        and ("exited unexpectedly" in text or "killed by signal" in text)
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

    ctx: Any = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
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


def _decode_chunk(decoder: Decoder, chunk: list[tuple[int, str]]) -> list[tuple[int, Any, str | None]]:
    """In a worker process: decode a batch's files; numpy arrays travel back (no shared memory to leak)."""
    out = []
    for index, path in chunk:
        tensor, error = decoder.try_decode(path)
        out.append((index, tensor.numpy() if tensor is not None else None, error))
    return out


def _as_items(decoded: list[tuple[int, Any, str | None]]) -> list[DecodedItem]:
    import torch

    return [DecodedItem(i, torch.from_numpy(a) if a is not None else None, e) for i, a, e in decoded]


def batches_surviving_crashes(
    paths: Sequence[str], decoder: Decoder, *, batch_size: int, workers: int, pin_memory: bool = False
) -> Iterator[Batch]:
    """:class:`Batch` objects in input order, decoded by ``workers`` processes that may die.

    Up to ``workers * PREFETCH`` batches are in flight. When a worker dies, the pool is broken:
    every batch in flight is decoded again one file at a time in processes of their own (the
    file that kills its process becomes an error record), then a new pool takes the rest.
    """
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    from functools import partial

    from imgclassify.system.parallel import ordered_map

    ctx: Any = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    starts = iter(range(0, len(paths), batch_size))  # batches no pool has taken yet, shared by every pool
    decode = partial(_decode_chunk, decoder)

    def chunk(start: int) -> list[tuple[int, str]]:
        return [(i, paths[i]) for i in range(start, min(start + batch_size, len(paths)))]

    def taken(in_flight: deque[int]) -> Iterator[list[tuple[int, str]]]:
        """The next batches' files, each batch's start noted in ``in_flight`` as a pool takes it."""
        for start in starts:
            in_flight.append(start)
            yield chunk(start)

    def ready(batch: Batch) -> Batch:
        return batch.pin_memory() if pin_memory else batch

    while True:
        in_flight: deque[int] = deque()  # the batches this pool took and that are not yielded yet
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
        decoded = ordered_map(decode, taken(in_flight), executor=pool, window=workers * PREFETCH)
        try:
            for items in decoded:
                in_flight.popleft()
                yield ready(collate(_as_items(items)))
            return
        except BrokenProcessPool:
            log.warning("a decode worker process died: decoding the files it may have held again, one process each")
        finally:
            decoded.close()
            pool.shutdown(wait=False, cancel_futures=True)
        for suspect_start in in_flight:
            yield ready(collate([decode_isolated(decoder, i, path) for i, path in chunk(suspect_start)]))
