"""Dynamic batching: concurrent requests' images stacked into one forward pass.

Callers :meth:`DynamicBatcher.submit` a job: a payload of one or more images. One worker
thread owns the model: it takes the first waiting job, gathers whatever else arrives within
``max_delay_s`` up to ``max_batch_size`` images (``len`` of each payload), turns the gathered
payloads into one uint8 batch with its ``prepare`` stage, runs them together, and hands each
job its own rows and its own per-image errors. Same arithmetic as the single-request path.
No forward pass is ever larger than ``max_batch_size``: a payload of more images is split into
jobs of at most that many (they share passes with other callers' jobs as any job does), and
its answer joined from theirs, so memory follows the batch size, never the payload's size.

``prepare`` is the one thing that differs between payload kinds. The default,
:func:`concat`, takes uint8 batches that callers decoded themselves and reports no errors;
the server on a GPU gives (name, bytes) lists and a stage that decodes them all in one
batched call (:class:`~imgclassify.decode.gpu.GpuBatchDecoder`), a bad image an error of its
own job only.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence, Sized
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

if TYPE_CHECKING:
    import torch

log = logging.getLogger("imgclassify")

P = TypeVar("P", bound=Sized)

#: a gathered batch, prepared: the rows of the images without an error (in order, None: no such
#: image), and ``{position: error}`` for the rest, positions counted across the gathered payloads
Prepared = tuple["torch.Tensor | None", dict[int, str]]


@dataclass(frozen=True)
class Answer:
    """One job's share of a batch: probabilities for its images without an error, in order, and
    ``{position in the payload: error}`` for the rest. ``probs`` is None when every image failed."""

    probs: torch.Tensor | None
    errors: dict[int, str] = field(default_factory=dict)


def concat(batches: list[Any]) -> Prepared:
    """The stage for payloads that are uint8 NCHW batches already: one tensor, no errors."""
    import torch

    return (torch.cat(batches) if len(batches) > 1 else batches[0]), {}


def join_answers(parts: Sequence[Future[Answer]], sizes: Sequence[int]) -> Future[Answer]:
    """One future for consecutive parts of a payload (``sizes[i]`` images each): rows concatenated,
    error positions counted across the parts; the first part's exception fails the whole."""
    joined: Future[Answer] = Future()
    remaining = [len(parts)]
    lock = threading.Lock()

    def done(_: Future[Answer]) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0]:
                return
        failed = next((f.exception() for f in parts if f.exception() is not None), None)
        if failed is not None:
            joined.set_exception(failed)
            return
        import torch

        rows, errors, start = [], {}, 0
        for future, size in zip(parts, sizes, strict=True):
            answer = future.result()
            if answer.probs is not None:
                rows.append(answer.probs)
            errors.update({start + position: error for position, error in answer.errors.items()})
            start += size
        joined.set_result(Answer(torch.cat(rows) if rows else None, errors))

    for future in parts:
        future.add_done_callback(done)
    return joined


@dataclass
class _Job(Generic[P]):
    payload: P
    future: Future[Answer] = field(default_factory=Future)


class DynamicBatcher(Generic[P]):
    """Runs ``forward`` (uint8 NCHW -> probabilities) on batches gathered across callers.

    ``prepare`` turns the gathered payloads into that uint8 batch (see :data:`Prepared`); it
    runs in the worker thread, and if it raises, every job of that gathered batch fails with
    the exception, as when ``forward`` raises.
    """

    @overload
    def __init__(
        self: DynamicBatcher[torch.Tensor],
        forward: Callable[[torch.Tensor], torch.Tensor],
        *,
        max_batch_size: int = ...,
        max_delay_s: float = ...,
        on_batch: Callable[[int], None] | None = ...,
    ) -> None: ...

    @overload
    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        *,
        prepare: Callable[[list[P]], Prepared],
        max_batch_size: int = ...,
        max_delay_s: float = ...,
        on_batch: Callable[[int], None] | None = ...,
    ) -> None: ...

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        *,
        prepare: Callable[[list[P]], Prepared] = concat,
        max_batch_size: int = 8,
        max_delay_s: float = 0.005,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.forward = forward
        self.prepare = prepare
        self.max_batch_size = max_batch_size
        self.max_delay_s = max(0.0, max_delay_s)
        self.on_batch = on_batch
        self._queue: queue.Queue[_Job[P] | None] = queue.Queue()
        self._carry: _Job[P] | None = None
        self._thread = threading.Thread(target=self._loop, name="imgclassify-batcher", daemon=True)
        self._thread.start()

    def submit(self, payload: P) -> Future[Answer]:
        """Queue a payload of ``len(payload)`` images; the future resolves to its :class:`Answer`.

        A payload of more than ``max_batch_size`` images (it must then support slicing, as
        tensors and lists do) goes as several jobs of at most that many; the answer is joined.
        """
        size = len(payload)
        if size <= self.max_batch_size:
            job: _Job[P] = _Job(payload)
            self._queue.put(job)
            return job.future
        step = self.max_batch_size
        parts = [self.submit(payload[start : start + step]) for start in range(0, size, step)]  # type: ignore[index]
        return join_answers(parts, [min(step, size - start) for start in range(0, size, step)])

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _gather(self, first: _Job[P]) -> list[_Job[P]]:
        jobs, size = [first], len(first.payload)
        deadline = time.monotonic() + self.max_delay_s
        while size < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # keep the stop signal for the loop
                break
            if size + len(job.payload) > self.max_batch_size:
                self._carry = job  # starts the next batch
                break
            jobs.append(job)
            size += len(job.payload)
        return jobs

    def _run(self, jobs: list[_Job[P]]) -> list[Answer]:
        batch, errors = self.prepare([job.payload for job in jobs])
        total = sum(len(job.payload) for job in jobs)
        rows = 0 if batch is None else len(batch)
        if rows + len(errors) != total:
            raise RuntimeError(f"the prepare stage gave {rows} rows and {len(errors)} errors for {total} images")
        probs = None
        if batch is not None:
            probs = self.forward(batch)
            if self.on_batch is not None:
                self.on_batch(len(probs))
        answers, start, row = [], 0, 0
        for job in jobs:
            count = len(job.payload)
            mine = {p - start: e for p, e in errors.items() if start <= p < start + count}
            good = count - len(mine)
            answers.append(Answer(probs[row : row + good] if probs is not None and good else None, mine))
            start, row = start + count, row + good
        return answers

    def _loop(self) -> None:
        while True:
            first = self._carry if self._carry is not None else self._queue.get()
            self._carry = None
            if first is None:
                return
            jobs = self._gather(first)
            try:
                answers = self._run(jobs)
            except BaseException as exc:
                for job in jobs:
                    job.future.set_exception(exc)
                continue
            for job, answer in zip(jobs, answers, strict=True):
                job.future.set_result(answer)
