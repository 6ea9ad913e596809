"""A loaded model (TorchScript, an exported program, a transformers model) as a plain module that
returns logits (imports torch: loaded lazily)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ExportedModule(nn.Module):
    """A loaded TorchScript or exported program as a plain module: logits out (a tuple's first item,
    a dict's ``logits``), run in chunks of ``batch`` when the file fixed its batch size."""

    def __init__(self, inner: nn.Module, batch: int | None, *, fixed_mode: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.batch = batch
        #: an exported program cannot change mode (it runs as it was exported, for inference)
        self.fixed_mode = fixed_mode

    def train(self, mode: bool = True) -> ExportedModule:
        if not self.fixed_mode:
            return super().train(mode)
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch is None or len(x) == self.batch:
            return _logits(self.inner(x))
        parts = []
        for start in range(0, len(x), self.batch):
            chunk = x[start : start + self.batch]
            n = len(chunk)
            if n < self.batch:  # pad the last chunk to the fixed size
                chunk = torch.cat([chunk, chunk.new_zeros(self.batch - n, *chunk.shape[1:])])
            parts.append(_logits(self.inner(chunk))[:n])
        return torch.cat(parts)


def _logits(out: Any) -> torch.Tensor:
    """The logits of a model's output: a tensor, a tuple's first item, a dict's or an object's ``logits``."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    elif isinstance(out, dict):
        out = out["logits"]
    logits: torch.Tensor = getattr(out, "logits", out)
    return logits
