"""The one classification pipeline: decode -> preprocess -> batch -> model -> top-k records.

Shared by the CLI, the Python API and the server. Files are decoded (in DataLoader worker
processes when ``workers > 0``) as uint8 tensors; normalization, the forward pass and softmax
run per batch on the device under ``torch.inference_mode()``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .backends import Backend
from .devices import Precision, autocast_dtype, resolve_device
from .errors import ImageError, UsageError, WeightsUnavailableError
from .imaging import DecodeOptions, load_tensor, open_image, preprocess
from .labels import Labels, labels_for
from .records import Candidate, Prediction
from .registry import DEFAULT_MODEL, FALLBACK_MODEL, ModelSpec, PreprocessConfig, get_spec
from .runtime import available_cores, configure_threads, tune_allocator
from .weights import offline_requested, read_state_dict, resolve_weights

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import nn

log = logging.getLogger("imgclassify")

#: probabilities are rounded to this many decimals in records (stable, readable output)
PROBABILITY_DECIMALS = 6


def default_workers(
    num_images: int, batch_size: int, device_type: str = "cpu", backend: Backend = Backend.TORCH
) -> int:
    """Decoding processes beside the model, chosen by measurement (benchmarks/throughput.py).

    On a 2-core CPU torch's forward pass already uses both cores and a decode process only adds
    contention (DenseNet-121 fp32: 30.7 images/s decoding in-process, 28.8 with one worker), so
    small machines decode in-process. OpenVINO leaves more room: one decode process gave 83.9
    against 73.3 images/s (bf16). GPUs leave the CPU to decoding: use most of its cores.
    """
    if num_images <= batch_size:
        return 0
    cores = available_cores()
    if device_type == "cuda":
        return max(1, min(8, cores - 1))
    if backend is Backend.OPENVINO:
        return max(1, cores // 2)
    return 0 if cores <= 2 else max(1, cores // 4)


@dataclass(frozen=True)
class _Item:
    index: int
    tensor: Any  # torch.Tensor | None
    error: str | None


class _FileDataset:
    """Map-style dataset over paths; a failure is returned as data, never raised."""

    def __init__(self, paths: Sequence[str], config: PreprocessConfig, decode: DecodeOptions) -> None:
        self.paths = paths
        self.config = config
        self.decode = decode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> _Item:
        try:
            return _Item(index, load_tensor(self.paths[index], self.config, self.decode), None)
        except ImageError as exc:
            return _Item(index, None, str(exc))
        except Exception as exc:
            return _Item(index, None, f"cannot decode image: {type(exc).__name__}: {exc}")


@dataclass
class _Batch:
    """A collated batch: the good images stacked (uint8 NCHW), the failures by index."""

    indices: list[int]
    tensor: Any  # torch.Tensor | None: rows for the indices without an error
    errors: dict[int, str]

    def pin_memory(self) -> _Batch:  # called by DataLoader's pinning thread (CUDA)
        if self.tensor is not None:
            self.tensor = self.tensor.pin_memory()
        return self


def _collate(items: list[_Item]) -> _Batch:
    import torch

    good = [item.tensor for item in items if item.tensor is not None]
    return _Batch(
        indices=[item.index for item in items],
        tensor=torch.stack(good) if good else None,
        errors={item.index: item.error for item in items if item.error is not None},
    )


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
        decode: DecodeOptions | None = None,
        runner: Callable[[torch.Tensor], torch.Tensor] | None = None,
        backend: Backend = Backend.TORCH,
    ) -> None:
        import torch

        self.spec = spec
        self.name = spec.name
        self.labels = labels
        self.num_classes = len(labels)
        self.device = device
        self.precision = precision
        self.preprocess_config = preprocess_config or spec.preprocess
        #: how files are decoded (reduced-scale JPEGs, truncated files, pixel limit)
        self.decode = decode or DecodeOptions()
        self.backend = backend
        self._oom_limit: int | None = None  # largest batch that fit after an out-of-memory error
        #: an alternative forward (float NCHW -> logits), e.g. OpenVINO; None: the torch model
        self._runner = runner
        self._autocast = autocast_dtype(precision, device) if runner is None else None
        self.model = model.to(device).eval()
        #: NHWC: faster convolutions with oneDNN on CPU and with cuDNN's tensor cores
        self.channels_last = runner is None and device.type in ("cpu", "cuda")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        #: bf16 on the CPU: a TorchScript graph traced and frozen under autocast, for runs of many
        #: full batches. Freezing casts the weights to bf16 once instead of in every forward pass:
        #: DenseNet-121 60 -> 72 images/s. Checked against eager on its first batch.
        self._graph_ok = runner is None and device.type == "cpu" and precision is Precision.BF16
        self._graph_shape: tuple[int, ...] | None = None  # the one batch shape the graph serves
        self._graphs: dict[tuple[int, ...], Any] = {}
        cfg = self.preprocess_config
        self._mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1) * 255.0

    def __repr__(self) -> str:
        return (
            f"Classifier(model={self.name!r}, device={str(self.device)!r}, precision={self.precision.value!r}, "
            f"backend={self.backend.value!r})"
        )

    # -- tensors -----------------------------------------------------------------------------
    def forward_uint8(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities (float32, on CPU) for a uint8 NCHW batch."""
        import torch

        with torch.inference_mode():
            x = batch.to(self.device, non_blocking=True).float()
            x = (x - self._mean) / self._std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if self._runner is not None:
                logits = self._runner(x)
            elif self._autocast is not None:
                with torch.autocast(self.device.type, dtype=self._autocast):
                    logits = (self._graph_for(x) or self.model)(x)
            else:
                logits = self.model(x)
            return torch.softmax(logits.float(), dim=1).cpu()

    def plan_batches(self, batch_size: int | None) -> None:
        """Say which batch size comes often (bf16 on CPU then uses a frozen graph for it); None: none."""
        crop = self.preprocess_config.crop_size
        self._graph_shape = (batch_size, 3, crop, crop) if batch_size else None

    def _graph_for(self, x: torch.Tensor) -> Any:
        """The frozen graph for ``x``'s shape, tracing it on first use; None: run eagerly."""
        shape = tuple(x.shape)
        if not self._graph_ok or shape != self._graph_shape:
            return None
        if shape not in self._graphs:
            self._graphs[shape] = self._trace(x)
        return self._graphs[shape]

    def _trace(self, x: torch.Tensor) -> Any:
        import warnings

        import torch

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph = torch.jit.freeze(torch.jit.trace(self.model, x, check_trace=False))  # type: ignore[no-untyped-call]
                graph(x)  # the profiling executor optimizes on the second call: pay it here
                eager, traced = self.model(x).float(), graph(x).float()
        except Exception as exc:  # some architectures do not trace: stay eager
            log.debug("%s: no frozen graph (%s); running eagerly", self.name, exc)
            return None
        if (
            not torch.equal(eager.argmax(1), traced.argmax(1))
            or (eager - traced).abs().max() > 0.05 * eager.abs().max()
        ):
            log.debug("%s: frozen graph disagrees with eager; running eagerly", self.name)
            return None
        return graph

    def forward_adaptive(self, batch: torch.Tensor) -> torch.Tensor:
        """``forward_uint8``, halving the batch on out-of-memory down to one image (with a warning).

        The smaller size is kept for the rest of the run, so the OOM is paid once.
        """
        limit = self._oom_limit or len(batch)
        if len(batch) > limit:
            return _cat([self.forward_adaptive(batch[i : i + limit]) for i in range(0, len(batch), limit)])
        try:
            return self.forward_uint8(batch)
        except Exception as exc:
            if not _is_oom(exc) or len(batch) == 1:
                raise
            half = max(1, len(batch) // 2)
            log.warning("out of memory at batch size %d on %s: retrying at %d", len(batch), self.device, half)
            self._oom_limit = half
            if self.device.type == "cuda":
                import torch

                torch.cuda.empty_cache()
            return self.forward_adaptive(batch)

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
        from torch.utils.data import DataLoader

        self.check_top_k(top_k)
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
        names = [os.fspath(p) for p in paths]
        if not names:
            return
        if workers is None:
            num_workers = default_workers(len(names), batch_size, self.device.type, self.backend)
        else:
            num_workers = workers
        # a frozen graph pays for its tracing (about 1 s) only over several full batches
        self.plan_batches(batch_size if len(names) >= 4 * batch_size else None)
        loader: DataLoader[Any] = DataLoader(
            _FileDataset(names, self.preprocess_config, self.decode),  # type: ignore[arg-type]
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if num_workers else None,
        )
        batch: _Batch
        for batch in loader:
            rows = iter(self.candidates(self.forward_adaptive(batch.tensor), top_k) if batch.tensor is not None else [])
            yield [
                Prediction(names[i], error=batch.errors[i]) if i in batch.errors else Prediction(names[i], next(rows))
                for i in batch.indices
            ]

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
            image = open_image(source, self.decode, short_side=self.preprocess_config.resize_size)
        except ImageError as exc:
            return Prediction(str(label), error=str(exc))
        return self.predict_images([image], top_k=top_k, names=[str(label)])[0]

    def warm_up(self, batch_size: int = 1) -> None:
        import torch

        size = self.preprocess_config.crop_size
        self.forward_uint8(torch.zeros(batch_size, 3, size, size, dtype=torch.uint8))


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
    decode: DecodeOptions | None = None,
    backend: Backend | str = Backend.TORCH,
) -> Classifier:
    """Load a model ready to classify.

    ``model``: a registry name (``imgclassify models``); ``None`` means DenseNet-121 when its
    weights are cached or downloadable, else the bundled EfficientNet-Lite0 (with a warning).
    ``weights``: a local checkpoint for that architecture. ``labels``: an ``index_to_name.json``
    style file. ``allow_download``: default True unless ``IMGCLASSIFY_OFFLINE`` is set.
    ``decode``: how files are decoded (:class:`~imgclassify.imaging.DecodeOptions`).
    """
    precision = Precision(precision)
    backend = Backend(backend)
    torch_device = resolve_device("cpu" if backend is Backend.OPENVINO and device == "auto" else device)
    spec, path = resolve_model(model, weights=weights, allow_download=allow_download, progress=progress)
    from .architectures import build_with_state

    tune_allocator()
    configure_threads()
    net, num_classes = build_with_state(spec, read_state_dict(path))
    label_set = labels_for(num_classes, labels)
    runner = None
    if backend is Backend.OPENVINO:
        from .backends import openvino_forward

        runner = openvino_forward(
            net,
            name=spec.name,
            weights_file=path,
            crop_size=spec.preprocess.crop_size,
            precision=precision,
            device=torch_device,
        )
    return Classifier(
        spec, net, label_set, torch_device, precision,
        decode=decode, runner=runner, backend=backend,
    )  # fmt: skip


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    import torch

    return torch.cat(parts)
