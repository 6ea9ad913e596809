"""The one classification pipeline: decode -> preprocess -> batch -> model -> top-k records.

Shared by the CLI, the Python API and the server. Files are decoded (in DataLoader worker
processes when ``workers > 0``) as uint8 tensors; normalization, the forward pass and softmax
run per batch on the device under ``torch.inference_mode()``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .devices import Precision, autocast_dtype, resolve_device
from .errors import ImageError, UsageError, WeightsUnavailableError
from .imaging import load_tensor, open_image, preprocess
from .labels import Labels, labels_for
from .records import Candidate, Prediction
from .registry import DEFAULT_MODEL, FALLBACK_MODEL, ModelSpec, PreprocessConfig, get_spec
from .weights import offline_requested, read_state_dict, resolve_weights

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import nn

log = logging.getLogger("imgclassify")

#: probabilities are rounded to this many decimals in records (stable, readable output)
PROBABILITY_DECIMALS = 6


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers(num_images: int, batch_size: int) -> int:
    """Decode in parallel with the forward pass, but only when there is more than one batch."""
    if num_images <= batch_size:
        return 0
    return max(1, min(4, available_cores() // 2))


@dataclass(frozen=True)
class _Item:
    index: int
    tensor: Any  # torch.Tensor | None
    error: str | None


class _FileDataset:
    """Map-style dataset over paths; a failure is returned as data, never raised."""

    def __init__(self, paths: Sequence[str], config: PreprocessConfig) -> None:
        self.paths = paths
        self.config = config

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> _Item:
        try:
            return _Item(index, load_tensor(self.paths[index], self.config), None)
        except ImageError as exc:
            return _Item(index, None, str(exc))
        except Exception as exc:
            return _Item(index, None, f"cannot decode image: {type(exc).__name__}: {exc}")


def _collate(items: list[_Item]) -> list[_Item]:
    return items


class Classifier:
    """A loaded model with its labels, preprocessing and device. Create it with :func:`load_classifier`."""

    def __init__(
        self,
        spec: ModelSpec,
        model: nn.Module,
        labels: Labels,
        device: torch.device,
        precision: Precision = Precision.FP32,
        preprocess_config: PreprocessConfig | None = None,
        *,
        weights_source: str = "",
    ) -> None:
        import torch

        self.spec = spec
        self.name = spec.name
        self.labels = labels
        self.num_classes = len(labels)
        self.device = device
        self.precision = precision
        self.preprocess_config = preprocess_config or spec.preprocess
        self.weights_source = weights_source
        self._autocast = autocast_dtype(precision, device)
        self.model = model.to(device).eval()
        cfg = self.preprocess_config
        self._mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1) * 255.0

    def __repr__(self) -> str:
        return f"Classifier(model={self.name!r}, device={str(self.device)!r}, precision={self.precision.value!r})"

    # -- tensors -----------------------------------------------------------------------------
    def forward_uint8(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities (float32, on CPU) for a uint8 NCHW batch."""
        import torch

        with torch.inference_mode():
            x = batch.to(self.device, non_blocking=True).float()
            x = (x - self._mean) / self._std
            if self._autocast is not None:
                with torch.autocast(self.device.type, dtype=self._autocast):
                    logits = self.model(x)
            else:
                logits = self.model(x)
            return torch.softmax(logits.float(), dim=1).cpu()

    def candidates(self, probs: torch.Tensor, top_k: int) -> list[tuple[Candidate, ...]]:
        values, indices = probs.topk(min(top_k, self.num_classes), dim=1)
        rows = []
        for vals, idxs in zip(values.tolist(), indices.tolist(), strict=True):
            rows.append(
                tuple(
                    Candidate(i, self.labels[i].wnid, self.labels[i].name, round(v, PROBABILITY_DECIMALS))
                    for v, i in zip(vals, idxs, strict=True)
                )
            )
        return rows

    def check_top_k(self, top_k: int) -> None:
        if not 1 <= top_k <= self.num_classes:
            raise UsageError(f"--top-k must be between 1 and {self.num_classes} (the model's class count), got {top_k}")

    # -- files -------------------------------------------------------------------------------
    def predict_batches(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        batch_size: int = 8,
        top_k: int = 1,
        workers: int | None = None,
    ) -> Iterator[list[Prediction]]:
        """Classify files, yielding one list of records per batch, in input order."""
        import torch
        from torch.utils.data import DataLoader

        self.check_top_k(top_k)
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
        names = [os.fspath(p) for p in paths]
        if not names:
            return
        num_workers = default_workers(len(names), batch_size) if workers is None else workers
        loader: DataLoader[_Item] = DataLoader(
            _FileDataset(names, self.preprocess_config),  # type: ignore[arg-type]
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=False,
            prefetch_factor=4 if num_workers else None,
        )
        for items in loader:
            good = [item for item in items if item.tensor is not None]
            tops: dict[int, tuple[Candidate, ...]] = {}
            if good:
                probs = self.forward_uint8(torch.stack([item.tensor for item in good]))
                tops = {item.index: row for item, row in zip(good, self.candidates(probs, top_k), strict=True)}
            yield [
                Prediction(names[item.index], tops[item.index]) if item.error is None
                else Prediction(names[item.index], error=item.error)
                for item in items
            ]  # fmt: skip

    def predict(self, paths: Iterable[str | os.PathLike[str]], **options: Any) -> Iterator[Prediction]:
        """Classify files; yields one :class:`Prediction` per path, in order (see ``predict_batches``)."""
        for batch in self.predict_batches(list(paths), **options):
            yield from batch

    # -- in-memory images (the server) ---------------------------------------------------------
    def predict_images(
        self, images: Sequence[Image.Image], *, top_k: int = 1, names: Sequence[str] | None = None
    ) -> list[Prediction]:
        """Classify already-opened RGB images in one batch."""
        import torch

        self.check_top_k(top_k)
        if not images:
            return []
        batch = torch.stack([preprocess(image, self.preprocess_config) for image in images])
        rows = self.candidates(self.forward_uint8(batch), top_k)
        labels = names or [f"<image {i}>" for i in range(len(images))]
        return [Prediction(label, row) for label, row in zip(labels, rows, strict=True)]

    def predict_file(self, source: str | os.PathLike[str] | IO[bytes], *, top_k: int = 1) -> Prediction:
        """Classify one file or binary stream; a bad image gives a record with ``error``."""
        label = os.fspath(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "<stream>")
        try:
            image = open_image(source)
        except ImageError as exc:
            return Prediction(str(label), error=str(exc))
        return self.predict_images([image], top_k=top_k, names=[str(label)])[0]

    def warm_up(self, batch_size: int = 1) -> None:
        import torch

        size = self.preprocess_config.crop_size
        self.forward_uint8(torch.zeros(batch_size, 3, size, size, dtype=torch.uint8))


def _configure_threads() -> None:
    import torch

    cores = available_cores()
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)


def resolve_model(
    model: str | None, *, weights: str | Path | None = None, allow_download: bool | None = None, progress: bool = False
) -> tuple[ModelSpec, Path]:
    """The model to use and the weights file to load, applying the default-model fallback.

    No torch import: the server checks this in its parent process before starting workers.
    """
    allow = (not offline_requested()) if allow_download is None else allow_download
    spec = get_spec(model or DEFAULT_MODEL)
    if weights is not None:
        return spec, Path(weights)
    try:
        return spec, resolve_weights(spec, allow_download=allow, progress=progress)
    except WeightsUnavailableError as exc:
        if model is not None:
            raise
        fallback = get_spec(FALLBACK_MODEL)
        log.warning(
            "%s weights are unavailable (%s); using the bundled %s instead. To insist on %s, "
            "pass --model %s with --weights FILE or with its file placed in the cache",
            DEFAULT_MODEL, str(exc).split(": ", 2)[-1].split(". Fixes")[0], fallback.name,
            DEFAULT_MODEL, DEFAULT_MODEL,
        )  # fmt: skip
        return fallback, resolve_weights(fallback, allow_download=allow, progress=progress)


def load_classifier(
    model: str | None = None,
    *,
    weights: str | Path | None = None,
    labels: str | Path | None = None,
    device: str = "auto",
    precision: Precision | str = Precision.FP32,
    allow_download: bool | None = None,
    progress: bool = False,
) -> Classifier:
    """Load a model ready to classify.

    ``model``: a registry name (``imgclassify models``); ``None`` means DenseNet-121 when its
    weights are cached or downloadable, else the bundled EfficientNet-Lite0 (with a warning).
    ``weights``: a local checkpoint for that architecture. ``labels``: an ``index_to_name.json``
    style file. ``allow_download``: default True unless ``IMGCLASSIFY_OFFLINE`` is set.
    """
    precision = Precision(precision)
    torch_device = resolve_device(device)
    spec, path = resolve_model(model, weights=weights, allow_download=allow_download, progress=progress)
    source = str(path) if weights is not None else spec.weights_status().value
    from .architectures import build_with_state

    _configure_threads()
    net, num_classes = build_with_state(spec, read_state_dict(path))
    label_set = labels_for(num_classes, labels)
    return Classifier(spec, net, label_set, torch_device, precision, weights_source=source)
