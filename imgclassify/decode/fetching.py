"""URL inputs: objects read ahead of the decoder, concurrently and bounded, then decoded as files are.

Reading an object is waiting on the network, not work for a core, so it has its own threads
(:func:`fetch_threads`, 16 by default): :func:`iter_fetched_batches` reads up to a window of
inputs ahead of the batch the model is on (:func:`fetch_window`: two batches, at least one read
per thread), hands the bytes to the decoder (``Decoder.try_decode(bytes)``: ``--max-pixels``,
truncation, EXIF, every rule as for a local file) in decode threads, and yields :class:`Batch`
objects in input order. Memory is bounded by the windows: at most a few batches of encoded bytes
are held, whatever the number of inputs. An object that cannot be read (missing, a 404, access
denied) becomes that input's error record and the run goes on. Local paths in the same list are
passed through and opened by the decoder itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING

from imgclassify.decode.decoder import Batch, DecodedItem, Decoder, Source, collate
from imgclassify.errors import ImageError
from imgclassify.system.storage import is_url

if TYPE_CHECKING:
    from imgclassify.system.storage import Storage

#: reads in flight at once when ``IMGCLASSIFY_FETCH_THREADS`` does not say
DEFAULT_FETCH_THREADS = 16


def fetch_threads() -> int:
    """Concurrent reads of URL inputs: ``IMGCLASSIFY_FETCH_THREADS`` (at least 1), else 16."""
    env = os.environ.get("IMGCLASSIFY_FETCH_THREADS", "").strip()
    return max(1, int(env)) if env.isdigit() else DEFAULT_FETCH_THREADS


def fetch_window(batch_size: int, threads: int) -> int:
    """Inputs read ahead of the one being decoded: two batches, and at least one per read thread."""
    return max(2 * batch_size, threads)


def _fetch(storage: Storage, paths: Sequence[str], index: int) -> tuple[int, Source | None, str | None]:
    """``(index, bytes or the local path, None)`` or ``(index, None, reason)``."""
    path = paths[index]
    if not is_url(path):
        return index, path, None  # a local file: the decoder opens it (and checks it is a regular file)
    try:
        return index, storage.read(path), None
    except ImageError as exc:
        return index, None, str(exc)
    except Exception as exc:  # a storage bug must stay with its input
        return index, None, f"cannot read: {type(exc).__name__}: {exc}"[:300]


def _decode(decoder: Decoder, fetched: tuple[int, Source | None, str | None]) -> DecodedItem:
    index, source, error = fetched
    if source is None:
        return DecodedItem(index, None, error)
    return DecodedItem(index, *decoder.try_decode(source))


def iter_fetched_batches(
    paths: Sequence[str],
    decoder: Decoder,
    storage: Storage,
    *,
    batch_size: int,
    threads: int,
    fetchers: int | None = None,
    pin_memory: bool = False,
) -> Iterator[Batch]:
    """Batches for ``paths`` (URLs, local paths among them), in order: ``fetchers`` threads read
    (None: :func:`fetch_threads`), ``threads`` threads decode (0: decoded in this loop)."""
    from concurrent.futures import ThreadPoolExecutor
    from itertools import islice

    from imgclassify.system.parallel import ordered_map

    fetchers = fetch_threads() if fetchers is None else max(1, fetchers)
    fetch_pool = ThreadPoolExecutor(fetchers, thread_name_prefix="imgclassify-fetch")
    decode_pool = ThreadPoolExecutor(threads, thread_name_prefix="imgclassify-decode") if threads > 0 else None
    fetched = ordered_map(
        partial(_fetch, storage, paths),
        range(len(paths)),
        executor=fetch_pool,
        window=fetch_window(batch_size, fetchers),
    )
    decode = partial(_decode, decoder)
    if decode_pool is not None:
        decoded: Iterator[DecodedItem] = ordered_map(decode, fetched, executor=decode_pool, window=batch_size + threads)
    else:
        decoded = map(decode, fetched)
    try:
        while items := list(islice(decoded, batch_size)):
            batch = collate(items)
            yield batch.pin_memory() if pin_memory else batch
    finally:
        close = getattr(decoded, "close", None)
        if close is not None:
            close()
        fetched.close()
        if decode_pool is not None:
            decode_pool.shutdown(wait=True, cancel_futures=True)
        fetch_pool.shutdown(wait=True, cancel_futures=True)
