"""Dynamic batching: concurrent requests' images stacked into one forward pass.

Request threads decode and preprocess their own images, then :meth:`DynamicBatcher.submit`
a uint8 batch. One worker thread owns the model: it takes the first waiting job, gathers
whatever else arrives within ``max_delay_s`` up to ``max_batch_size`` images, runs them
together, and hands each job its own rows. Same arithmetic as the single-request path.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger("imgclassify")


@dataclass
class _Job:
    batch: torch.Tensor
    future: Future[torch.Tensor] = field(default_factory=Future)


class DynamicBatcher:
    """Runs ``forward`` (uint8 NCHW -> probabilities) on batches gathered across callers."""

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        *,
        max_batch_size: int = 8,
        max_delay_s: float = 0.005,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.forward = forward
        self.max_batch_size = max_batch_size
        self.max_delay_s = max(0.0, max_delay_s)
        self.on_batch = on_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._carry: _Job | None = None
        self._thread = threading.Thread(target=self._loop, name="imgclassify-batcher", daemon=True)
        self._thread.start()

    def submit(self, batch: torch.Tensor) -> Future[torch.Tensor]:
        """Queue a uint8 batch; the future resolves to its probabilities, row for row."""
        job = _Job(batch)
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _gather(self, first: _Job) -> list[_Job]:
        jobs, size = [first], len(first.batch)
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
            if size + len(job.batch) > self.max_batch_size:
                self._carry = job  # starts the next batch
                break
            jobs.append(job)
            size += len(job.batch)
        return jobs

    def _loop(self) -> None:
        import torch

        while True:
            first = self._carry if self._carry is not None else self._queue.get()
            self._carry = None
            if first is None:
                return
            jobs = self._gather(first)
            try:
                probs = self.forward(torch.cat([job.batch for job in jobs]) if len(jobs) > 1 else jobs[0].batch)
            except BaseException as exc:
                for job in jobs:
                    job.future.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(len(probs))
            start = 0
            for job in jobs:
                job.future.set_result(probs[start : start + len(job.batch)])
                start += len(job.batch)
