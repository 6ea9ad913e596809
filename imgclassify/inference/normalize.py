"""What every backend applies: the normalization before the model (uint8 NCHW -> float, minus mean,
over std) and the scores after it (softmax, or sigmoid for a multi-label head)."""

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


def scores(logits: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """float32 class scores on the CPU: softmax over the classes, or one sigmoid per class."""
    import torch

    x = logits.float()
    return (torch.sigmoid(x) if multi_label else torch.softmax(x, dim=1)).cpu()
