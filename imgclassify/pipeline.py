"""The classifier: the stages composed. Decoder -> batches -> backend -> renderer.

:func:`load_classifier` turns :class:`~imgclassify.options.ModelOptions` into a
:class:`Classifier` holding the three stages every path reuses (the CLI runner, the Python API,
the server and the Ray engine): a :class:`~imgclassify.decode.decoder.Decoder` (file or bytes -> uint8
tensor), an :class:`~imgclassify.inference.InferenceBackend` (uint8 batch -> probabilities, with
out-of-memory halving) and the labels that :class:`~imgclassify.results.render.Renderer` turns into
records. A Classifier pickles: another process receives the same stages.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from imgclassify.decode.decoder import Batch, Decoder
from imgclassify.decode.imaging import DecodeOptions, preprocess
from imgclassify.decode.loaders import open_batches
from imgclassify.decode.loading import default_workers, resolve_batch_size
from imgclassify.errors import ImageError
from imgclassify.inference import InferenceBackend, create_backend
from imgclassify.models.labels import Labels
from imgclassify.models.plan import LabelSet, ModelPlan, plan_model
from imgclassify.models.registry import ModelSpec, PreprocessConfig
from imgclassify.options import ModelOptions
from imgclassify.results.records import Candidate, Prediction
from imgclassify.results.render import PROBABILITY_DECIMALS, Renderer, check_top_k
from imgclassify.system.devices import Backend, Precision, resolve_device
from imgclassify.system.storage import is_url

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from imgclassify.system.storage import Storage

__all__ = ["PROBABILITY_DECIMALS", "Classifier", "load_classifier"]


class Classifier:
    """A loaded model with its decoder, backend and labels. Create it with :func:`load_classifier`."""

    def __init__(self, plan: ModelPlan, decoder: Decoder, backend: InferenceBackend, label_set: LabelSet) -> None:
        self.plan = plan
        self.decoder = decoder
        self.backend = backend
        self.label_set = label_set

    # -- what it is ------------------------------------------------------------------------
    @property
    def spec(self) -> ModelSpec:
        return self.plan.spec

    @property
    def name(self) -> str:
        return self.plan.spec.name

    @property
    def options(self) -> ModelOptions:
        return self.plan.options

    @property
    def labels(self) -> Labels:
        return self.label_set.labels

    @property
    def num_classes(self) -> int:
        return len(self.label_set.labels)

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def precision(self) -> Precision:
        return self.plan.options.precision

    @property
    def backend_kind(self) -> Backend:
        return self.plan.options.backend

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self.decoder.preprocess

    @property
    def decode(self) -> DecodeOptions:
        return self.decoder.options

    def __repr__(self) -> str:
        return (
            f"Classifier(model={self.name!r}, device={str(self.device)!r}, precision={self.precision.value!r}, "
            f"backend={self.backend.name!r})"
        )

    def renderer(self, top_k: int = 1, threshold: float | None = None) -> Renderer:
        return Renderer(self.labels, top_k, threshold, multi_label=self.plan.multi_label)

    def check_top_k(self, top_k: int) -> None:
        check_top_k(top_k, self.num_classes)

    # -- tensors -----------------------------------------------------------------------------
    def forward_uint8(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities (float32, on the CPU) for a uint8 NCHW batch."""
        return self.backend(batch)

    def plan_batches(self, batch_size: int, batches: int) -> None:
        """Say that about ``batches`` full batches of ``batch_size`` will come (on the CPU, a long
        enough run then uses a frozen graph for that batch shape: backends/frozen.py)."""
        self.backend.plan(batch_size, batches)

    def candidates(self, probs: torch.Tensor, top_k: int) -> list[tuple[Candidate, ...]]:
        return self.renderer(top_k).candidates(probs)

    def classify_batch(self, batch: Batch, names: Sequence[str], renderer: Renderer) -> list[Prediction]:
        """Records for one loaded batch; ``names`` holds every input's name by global index."""
        probs = self.forward_uint8(batch.tensor) if batch.tensor is not None else None
        local_errors = {k: batch.errors[i] for k, i in enumerate(batch.indices) if i in batch.errors}
        return renderer.render([names[i] for i in batch.indices], probs, local_errors)

    # -- files -------------------------------------------------------------------------------
    def predict_batches(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        batch_size: int | None = None,
        top_k: int = 1,
        workers: int | None = None,
        threshold: float | None = None,
        storage: Storage | None = None,
    ) -> Iterator[list[Prediction]]:
        """Classify files, yielding one list of records per batch, in input order.

        ``batch_size``: images per forward pass; None: the default for the device the model runs
        on (:func:`~imgclassify.decode.loading.default_batch_size`: 8 on the CPU, 64 on CUDA).
        ``threshold``: records whose top-1 probability is below it say ``confident=False``.
        Paths may be URLs (``s3://bucket/key``, ``https://...``): ``storage`` reads them (None:
        each filesystem's own configuration, :class:`~imgclassify.system.storage.Storage`).
        """
        renderer = self.renderer(top_k, threshold)
        batch_size = resolve_batch_size(batch_size, self.device)
        names = [os.fspath(p) for p in paths]
        if not names:
            return
        if workers is None:
            workers = default_workers(len(names), batch_size, self.device.type, self.backend_kind)
        self.plan_batches(batch_size, len(names) // batch_size)
        batches = open_batches(
            names, self.decoder, self.device, batch_size=batch_size, workers=workers, storage=storage
        )
        for batch in batches:
            yield self.classify_batch(batch, names, renderer)

    def predict(self, paths: Iterable[str | os.PathLike[str]], **options: Any) -> Iterator[Prediction]:
        """Classify files; yields one :class:`Prediction` per path, in order (see ``predict_batches``)."""
        for batch in self.predict_batches(list(paths), **options):
            yield from batch

    # -- in-memory images ---------------------------------------------------------------------
    def predict_images(
        self,
        images: Sequence[Image.Image],
        *,
        top_k: int = 1,
        names: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> list[Prediction]:
        """Classify already-opened RGB images, in forward passes of at most ``batch_size`` (default:
        the device's, as ``predict``): memory follows the batch size, not the number of images."""
        import torch

        from imgclassify.decode.loading import resolve_batch_size

        renderer = self.renderer(top_k)
        if not images:
            return []
        step = resolve_batch_size(batch_size, self.device, "batch_size")
        labels = list(names) if names is not None else [f"<image {i}>" for i in range(len(images))]
        predictions: list[Prediction] = []
        for start in range(0, len(images), step):
            batch = torch.stack([preprocess(image, self.preprocess_config) for image in images[start : start + step]])
            predictions += renderer.render(labels[start : start + step], self.forward_uint8(batch))
        return predictions

    def predict_file(self, source: str | os.PathLike[str] | IO[bytes] | bytes, *, top_k: int = 1) -> Prediction:
        """Classify one file, binary stream or bytes; a bad image gives a record with ``error``."""
        if isinstance(source, (str, os.PathLike)):
            label = os.fspath(source)
        else:
            label = str(getattr(source, "name", "<stream>"))
        renderer = self.renderer(top_k)
        if isinstance(source, str) and is_url(source):  # s3://, https://: read, then decoded as bytes
            from imgclassify.system.storage import Storage

            try:
                source = Storage().read(source)
            except ImageError as exc:
                return Prediction(label, error=str(exc))
        tensor, error = self.decoder.try_decode(source)
        if tensor is None:
            return Prediction(label, error=error)
        return renderer.render([label], self.forward_uint8(tensor.unsqueeze(0)))[0]

    def warm_up(self, batch_size: int = 1) -> None:
        import torch

        size = self.preprocess_config.crop_size
        self.forward_uint8(torch.zeros(batch_size, 3, size, size, dtype=torch.uint8))


def build_classifier(plan: ModelPlan) -> Classifier:
    """Load the model of ``plan`` (imports torch) and compose the stages."""
    options = plan.options
    # OpenVINO (also int8) and ONNX Runtime run on the CPU here: "auto" means the CPU there
    on_cpu_runtime = options.backend is not Backend.TORCH or options.precision is Precision.INT8
    device = resolve_device("cpu" if on_cpu_runtime and options.device == "auto" else options.device)
    net, onnx_file, num_classes = build_net(plan)
    backend = create_backend(
        options.backend, net, preprocess=plan.preprocess, device=device, precision=options.precision,
        model_name=plan.spec.name, weights_file=plan.weights_path, onnx_file=onnx_file,
        multi_label=plan.multi_label,
    )  # fmt: skip
    label_set = plan.label_set(num_classes)
    return Classifier(plan, Decoder(plan.preprocess, options.decode), backend, label_set)


def build_net(plan: ModelPlan) -> tuple[Any, Path | None, int]:
    """The torch module (or the ONNX file) and the class count of ``plan``'s model."""
    from imgclassify.models.kinds import ModelKind, load

    if plan.kind is ModelKind.REGISTRY:
        from imgclassify.models.architectures import build_with_state
        from imgclassify.models.weights import read_state_dict

        net, num_classes = build_with_state(plan.spec, read_state_dict(plan.weights_path))
        return net, None, num_classes
    loaded = load(plan)
    return loaded.net, loaded.onnx_file, loaded.num_classes


def load_classifier(
    model: str | ModelOptions | ModelPlan | None = None, *, progress: bool = False, **options: Any
) -> Classifier:
    """Load a model ready to classify.

    ``load_classifier(ModelOptions(...))``, or the same fields as keywords:
    ``load_classifier("efficientnet_lite0", device="cpu", precision="bf16")``. ``model``: a
    registry name (``imgclassify models``); ``None`` means DenseNet-121 when its weights are
    cached or downloadable, else the bundled EfficientNet-Lite0 (with a warning). ``weights``:
    a local checkpoint for that architecture. ``labels``: an ``index_to_name.json`` style file.
    ``offline``: never download (also ``IMGCLASSIFY_OFFLINE=1``). ``decode``: a
    :class:`~imgclassify.decode.imaging.DecodeOptions`.
    """
    if isinstance(model, ModelPlan):
        return build_classifier(model)
    if isinstance(model, ModelOptions):
        resolved = model.replace(**options) if options else model
    else:
        if "allow_download" in options:  # the keyword of earlier versions
            allow = options.pop("allow_download")
            if allow is not None:
                options["offline"] = not allow
        resolved = ModelOptions(model=model, **options)
    return build_classifier(plan_model(resolved, progress=progress))
