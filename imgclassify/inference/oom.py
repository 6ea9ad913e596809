"""Out-of-memory halving, around any backend.

A batch that runs out of memory (CUDA, or the CPU where PyTorch reports it) is split in halves
and retried, down to one image, with a warning; the smaller size is kept for the rest of the
run, so the out-of-memory error is paid once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from imgclassify.inference import InferenceBackend

log = logging.getLogger("imgclassify")


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class HalvingOnOutOfMemory:
    def __init__(self, inner: InferenceBackend) -> None:
        self.inner = inner
        self.name = inner.name
        #: the largest batch that fitted after an out-of-memory error (None: no error yet)
        self.limit: int | None = None

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def plan(self, batch_size: int, batches: int) -> None:
        self.inner.plan(batch_size, batches)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        import torch

        limit = self.limit or len(batch)
        if len(batch) > limit:
            return torch.cat([self(batch[i : i + limit]) for i in range(0, len(batch), limit)])
        try:
            return self.inner(batch)
        except Exception as exc:
            if not is_out_of_memory(exc) or len(batch) == 1:
                raise
            half = max(1, len(batch) // 2)
            log.warning("out of memory at batch size %d on %s: retrying at %d", len(batch), self.device, half)
            self.limit = half
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return self(batch)
