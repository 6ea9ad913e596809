"""What will be loaded, decided without importing torch: the model, its weights file, its labels.

:func:`plan_model` applies the default-model fallback, finds (or downloads) the weights, and
reads a labels file, so a run can check everything (a ``--resume`` against its manifest, a
server's configuration) before paying for torch and the model. The plan pickles.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgclassify.errors import WeightsUnavailableError
from imgclassify.models.kinds import ModelKind, WeightsSource, parse_reference, resolve
from imgclassify.models.labels import LabelSet, LabelsSource, generic_labels, imagenet_labels, load_labels
from imgclassify.models.registry import DEFAULT_MODEL, FALLBACK_MODEL, ModelSpec, PreprocessConfig, get_spec
from imgclassify.models.weights import resolve_weights
from imgclassify.options import ModelOptions
from imgclassify.system.devices import Backend
from imgclassify.system.digests import sha256_file

__all__ = ["LabelSet", "LabelsSource", "ModelKind", "ModelPlan", "WeightsSource", "plan_model"]

log = logging.getLogger("imgclassify")


@dataclass(frozen=True)
class ModelPlan:
    """The options, the model chosen (after any fallback), its weights file and its labels file."""

    options: ModelOptions
    spec: ModelSpec
    weights_path: Path
    weights_source: WeightsSource
    #: parsed ``--labels`` file (None: decided by the model's class count once loaded)
    labels_file: LabelSet | None = None
    kind: ModelKind = ModelKind.REGISTRY
    #: where the model came from (repo, revision, path, name), for the manifest
    source: dict[str, Any] = field(default_factory=dict)
    #: every other file the model is loaded from (config.json, ...), hashed in the manifest
    files: tuple[Path, ...] = ()
    #: the model's own class names (its config's id2label or label_names)
    model_labels: LabelSet | None = None
    #: the model's config says multi-label (``--multi-label`` also turns it on)
    model_multi_label: bool = False
    #: what the model's kind needs to build it (see :mod:`imgclassify.models.kinds`)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def preprocess(self) -> PreprocessConfig:
        """The model's own preprocessing with ``--resize``/``--crop``/``--interpolation``/``--mean``/``--std`` applied."""
        return self.options.preprocess_overrides(self.spec.preprocess)

    @property
    def multi_label(self) -> bool:
        asked = self.options.multi_label
        return self.model_multi_label if asked is None else asked

    @property
    def default_threshold(self) -> float | None:
        """The ``--threshold`` a run gets when it gives none: a fitted model's, measured by its
        cross-validation (``imgclassify fit``); None for other models."""
        value = self.extra.get("threshold") if self.kind is ModelKind.FITTED else None
        return float(value) if value is not None else None

    @property
    def weights_sha256(self) -> str:
        return sha256_file(self.weights_path)

    def label_set(self, num_classes: int) -> LabelSet:
        """The labels for a model with ``num_classes`` outputs (checks a labels file's size)."""
        from imgclassify.models.labels import check_count

        if self.labels_file is not None:
            check_count(self.labels_file.labels, num_classes, self.labels_file.path)
            return self.labels_file
        if self.model_labels is not None and len(self.model_labels.labels) == num_classes:
            return self.model_labels
        if num_classes == 1000:
            return LabelSet(imagenet_labels(), LabelsSource.IMAGENET)
        return LabelSet(generic_labels(num_classes), LabelsSource.GENERIC)

    def expected_label_set(self) -> LabelSet | None:
        """The labels, when known before loading (not for a ``--weights`` file without ``--labels``)."""
        if self.labels_file is not None:
            return self.labels_file
        if self.model_labels is not None:
            return self.model_labels
        if self.weights_source is WeightsSource.FILE or self.spec.num_classes <= 0:
            return None  # the class count comes from the checkpoint
        return self.label_set(self.spec.num_classes)

    def describe_weights(self) -> dict[str, Any]:
        return {
            "source": self.weights_source.value,
            "package": self.spec.bundled_package if self.weights_source is WeightsSource.BUNDLED else None,
            "path": str(self.weights_path),
            "sha256": self.weights_sha256,
        }

    def describe_files(self) -> list[dict[str, str]]:
        """Every file the model is loaded from besides the weights, with its sha256."""
        return [{"path": str(path), "sha256": sha256_file(path)} for path in self.files]


def plan_model(options: ModelOptions, *, progress: bool = False) -> ModelPlan:
    """Resolve ``options`` to a :class:`ModelPlan`; no torch import (downloads when allowed).

    With no model named, DenseNet-121 when its weights are cached or downloadable, else the
    bundled EfficientNet-Lite0 with one warning. A model named explicitly never falls back.
    """
    labels = LabelSet(load_labels(options.labels), LabelsSource.FILE, options.labels) if options.labels else None
    if options.model is not None:
        ref = parse_reference(options.model)
        if ref.scheme != "registry":
            found = resolve(ref, options, progress=progress)
            if found.kind is ModelKind.ONNX and options.backend is Backend.TORCH:
                options = options.replace(backend=Backend.ONNXRUNTIME)  # an ONNX file runs on ONNX Runtime
            return ModelPlan(
                options, found.spec, found.weights_path, found.weights_source, labels, kind=found.kind,
                source=found.source, files=found.files, model_labels=found.model_labels,
                model_multi_label=found.multi_label, extra=found.extra,
            )  # fmt: skip
    spec = get_spec(options.model or DEFAULT_MODEL)
    if options.weights is not None:
        return ModelPlan(options, spec, options.weights, WeightsSource.FILE, labels)
    allow = options.allow_download
    try:
        path = resolve_weights(spec, allow_download=allow, progress=progress)
    except WeightsUnavailableError as exc:
        if options.model is not None:
            raise
        fallback = get_spec(FALLBACK_MODEL)
        log.warning(
            "no %s weights (%s): using the bundled %s; -m %s silences this",
            DEFAULT_MODEL, exc.reason, fallback.name, fallback.name,
        )  # fmt: skip
        spec, path = fallback, resolve_weights(fallback, allow_download=allow, progress=progress)
    source = WeightsSource.BUNDLED if spec.bundled_package is not None else WeightsSource.CACHE
    return ModelPlan(options, spec, path, source, labels)
