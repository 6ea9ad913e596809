"""The one normalization every backend applies: uint8 NCHW -> float, minus mean, over std."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from imgclassify.decode.preprocess import PreprocessConfig


class Normalizer:
    """``(x - 255 * mean) / (255 * std)`` on ``device``, optionally channels-last."""

    def __init__(self, preprocess: PreprocessConfig, device: torch.device, *, channels_last: bool) -> None:
        import torch

        self.device = device
        self.channels_last = channels_last
        self.mean = torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1) * 255.0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        import torch

        x = batch.to(self.device, non_blocking=True).float()
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
