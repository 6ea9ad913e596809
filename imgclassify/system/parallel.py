"""One ordered, bounded parallel map: results in input order, at most a window of them in flight.

:func:`ordered_map` is the pattern every parallel stage here shares (decode threads, decode
processes, report thumbnails): submit work a bounded window ahead, take results in input order
(so records come out as the inputs went in), keep the executor busy while the caller uses each
result, and cancel what was not started when the caller stops early or something fails. The
executor is the caller's (threads or processes, its size, its shutdown); this only schedules.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Executor, Future
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], *, executor: Executor, window: int
) -> Generator[R, None, None]:
    """``fn(item)`` for each of ``items`` run on ``executor``, the results yielded in input order.

    At most ``window`` calls are submitted and not yet yielded at any time, so memory stays
    bounded whatever the number of items: ``items`` is read lazily, ``window`` ahead of the
    caller at most (it may be an endless iterator). When a result is taken the next item is
    submitted before it is yielded, so the executor works on while the caller uses it.

    An exception from ``fn`` is raised here in its item's place, after the results before it.
    When the generator ends early (closed, garbage collected, or raising, ``KeyboardInterrupt``
    included) the calls not yet started are cancelled; the ones already running finish in the
    executor and their results are dropped (shut the executor down to wait for them). Nothing is
    submitted before the first result is asked for. ``fn`` and the items must pickle for a process
    pool (:func:`functools.partial` of a module-level function does). ``window`` < 1: ValueError.
    """
    if window < 1:
        raise ValueError(f"ordered_map: window must be at least 1, got {window}")
    return _ordered(fn, iter(items), executor, window)


def _ordered(fn: Callable[[T], R], items: Iterable[T], executor: Executor, window: int) -> Generator[R, None, None]:
    pending: deque[Future[R]] = deque()

    def fill() -> None:
        for item in itertools.islice(items, window - len(pending)):
            pending.append(executor.submit(fn, item))

    try:
        fill()
        while pending:
            result = pending.popleft().result()
            fill()
            yield result
    finally:
        for future in pending:
            future.cancel()
