"""The embedder: a model plan -> pooled features (float32, one row per image) for files, in batches.

The model's own decoder and preprocessing, the decode worker processes of ``predict``
(:func:`~imgclassify.decode.loaders.open_batches`), and the torch backend's normalization,
channels-last layout and autocast (:class:`~imgclassify.inference.torch_eager.TorchEagerBackend`),
run on :func:`~imgclassify.models.features.load_features`' module instead of the classifier.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imgclassify.errors import UsageError
from imgclassify.system.devices import Backend, Precision

if TYPE_CHECKING:
    import numpy as np
    import torch

    from imgclassify.models.plan import ModelPlan


@dataclass
class EmbeddedBatch:
    """One batch: the inputs' indices, a vector per good one (rows in index order), the failures."""

    indices: list[int]
    #: float32 (good images, D); None when every image of the batch failed
    vectors: np.ndarray | None
    errors: dict[int, str] = field(default_factory=dict)

    def rows(self) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
        """(index, vector or None, error or None) per input of the batch, in order."""
        good = iter(self.vectors if self.vectors is not None else [])
        for index in self.indices:
            if index in self.errors:
                yield index, None, self.errors[index]
            else:
                yield index, next(good), None


class Embedder:
    """``plan``'s model loaded as a feature extractor, ready to embed files or uint8 batches."""

    def __init__(self, plan: ModelPlan) -> None:
        from imgclassify.decode.decoder import Decoder
        from imgclassify.inference.torch_eager import TorchEagerBackend
        from imgclassify.models.features import load_features
        from imgclassify.system.devices import resolve_device

        options = plan.options
        if options.backend is not Backend.TORCH or options.precision is Precision.INT8:
            raise UsageError(
                "embeddings are computed by the torch backend: --backend torch, --precision fp32, bf16 or fp16"
            )
        self.plan = plan
        self.device = resolve_device(options.device)
        self.backend = TorchEagerBackend(
            load_features(plan), preprocess=plan.preprocess, device=self.device, precision=options.precision
        )
        self.decoder = Decoder(plan.preprocess, options.decode)
        self._dim: int | None = None

    @property
    def name(self) -> str:
        return self.plan.spec.name

    @property
    def dim(self) -> int:
        """The length of one vector (one forward pass of a blank image, the first time)."""
        if self._dim is None:
            import torch

            size = self.plan.preprocess.crop_size
            self._dim = int(self.vectors(torch.zeros(1, 3, size, size, dtype=torch.uint8)).shape[1])
        return self._dim

    def vectors(self, batch: torch.Tensor) -> np.ndarray:
        """float32 features (N, D) for a uint8 NCHW batch."""
        import torch

        with torch.inference_mode():
            out = self.backend.logits(self.backend.normalize(batch))
        array: np.ndarray = out.float().cpu().numpy()
        if array.ndim != 2:
            raise UsageError(f"{self.name}: its features are not one vector per image (shape {tuple(array.shape)})")
        return array

    def batches(
        self, paths: Sequence[str | os.PathLike[str]], *, batch_size: int | None = None, workers: int | None = None
    ) -> Iterator[EmbeddedBatch]:
        """Embed files in input order, one :class:`EmbeddedBatch` per forward pass; a bad file is an error, never raised."""
        from imgclassify.decode.loaders import open_batches
        from imgclassify.decode.loading import default_workers, resolve_batch_size

        names = [os.fspath(p) for p in paths]
        if not names:
            return
        size = resolve_batch_size(batch_size, self.device)
        if workers is None:
            workers = default_workers(len(names), size, self.device.type, Backend.TORCH)
        for batch in open_batches(names, self.decoder, self.device, batch_size=size, workers=workers):
            vectors = self.vectors(batch.tensor) if batch.tensor is not None else None
            yield EmbeddedBatch(list(batch.indices), vectors, dict(batch.errors))

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "dim": self.dim, "device": str(self.device)}
