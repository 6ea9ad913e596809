"""PyTorch eager: the model as loaded, channels-last, autocast for bf16/fp16."""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgclassify.inference.normalize import Normalizer, scores
from imgclassify.system.devices import Precision, autocast_dtype

if TYPE_CHECKING:
    import torch
    from torch import nn

    from imgclassify.decode.preprocess import PreprocessConfig


class TorchEagerBackend:
    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        *,
        preprocess: PreprocessConfig,
        device: torch.device,
        precision: Precision,
        multi_label: bool = False,
    ) -> None:
        import torch

        self.precision = precision
        self.multi_label = multi_label
        self.autocast = autocast_dtype(precision, device)
        #: NHWC: faster convolutions with oneDNN on the CPU and with cuDNN's tensor cores
        channels_last = device.type in ("cpu", "cuda")
        self.model = model.to(device).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.normalize = Normalizer(preprocess, device, channels_last=channels_last)

    @property
    def device(self) -> torch.device:
        return self.normalize.device

    def plan(self, batch_size: int, batches: int) -> None:
        pass

    def logits(self, x: torch.Tensor, module: nn.Module | None = None) -> torch.Tensor:
        """Logits for a normalized batch, through ``module`` (default: the eager model)."""
        import torch

        run = module if module is not None else self.model
        if self.autocast is None:
            out: torch.Tensor = run(x)
            return out
        with torch.autocast(self.device.type, dtype=self.autocast):
            out = run(x)
            return out

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            return scores(self.logits(self.normalize(batch)), self.multi_label)
