"""What will be loaded, decided without importing torch: the model, its weights file, its labels.

:func:`plan_model` applies the default-model fallback, finds (or downloads) the weights, and
reads a labels file, so a run can check everything (a ``--resume`` against its manifest, a
server's configuration) before paying for torch and the model. The plan pickles.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgclassify.errors import WeightsUnavailableError
from imgclassify.models.labels import Labels, generic_labels, imagenet_labels, load_labels
from imgclassify.models.registry import DEFAULT_MODEL, FALLBACK_MODEL, ModelSpec, PreprocessConfig, get_spec
from imgclassify.models.weights import resolve_weights
from imgclassify.options import ModelOptions
from imgclassify.system.digests import sha256_file, sha256_json

log = logging.getLogger("imgclassify")


class WeightsSource(str, enum.Enum):
    BUNDLED = "bundled"  # a Python package that ships the file (efficientnet_lite0)
    CACHE = "cache"  # the torch hub cache (downloaded once, or placed there)
    FILE = "file"  # --weights FILE


class LabelsSource(str, enum.Enum):
    IMAGENET = "bundled ImageNet-1k"
    FILE = "file"
    GENERIC = "generic (class_0, class_1, ...)"


@dataclass(frozen=True)
class LabelSet:
    labels: Labels
    source: LabelsSource
    path: Path | None = None

    @property
    def parsed_sha256(self) -> str:
        """sha256 of the labels as parsed (canonical JSON of [[wnid, name], ...]): same labels, same
        hash, whatever file they came from (what ``--resume`` compares)."""
        return sha256_json([[label.wnid, label.name] for label in self.labels])

    @property
    def file(self) -> Path | None:
        """The file the labels were read from: ``--labels``, the bundled ImageNet file, or none."""
        if self.path is not None:
            return self.path
        if self.source is LabelsSource.IMAGENET:
            from importlib import resources

            return Path(str(resources.files("imgclassify") / "data" / "imagenet_labels.json"))
        return None

    def describe(self) -> dict[str, Any]:
        file = self.file
        return {
            "source": self.source.value,
            "path": str(self.path) if self.path else None,
            "count": len(self.labels),
            "sha256": sha256_file(file) if file is not None else None,  # the file's, as sha256sum prints it
            "parsed_sha256": self.parsed_sha256,
        }


@dataclass(frozen=True)
class ModelPlan:
    """The options, the model chosen (after any fallback), its weights file and its labels file."""

    options: ModelOptions
    spec: ModelSpec
    weights_path: Path
    weights_source: WeightsSource
    #: parsed ``--labels`` file (None: decided by the model's class count once loaded)
    labels_file: LabelSet | None = None

    @property
    def preprocess(self) -> PreprocessConfig:
        return self.spec.preprocess

    @property
    def weights_sha256(self) -> str:
        return sha256_file(self.weights_path)

    def label_set(self, num_classes: int) -> LabelSet:
        """The labels for a model with ``num_classes`` outputs (checks a labels file's size)."""
        from imgclassify.models.labels import check_count

        if self.labels_file is not None:
            check_count(self.labels_file.labels, num_classes, self.labels_file.path)
            return self.labels_file
        if num_classes == 1000:
            return LabelSet(imagenet_labels(), LabelsSource.IMAGENET)
        return LabelSet(generic_labels(num_classes), LabelsSource.GENERIC)

    def expected_label_set(self) -> LabelSet | None:
        """The labels, when known before loading (not for a ``--weights`` file without ``--labels``)."""
        if self.labels_file is not None:
            return self.labels_file
        if self.weights_source is WeightsSource.FILE:
            return None  # the class count comes from the checkpoint
        return self.label_set(self.spec.num_classes)

    def describe_weights(self) -> dict[str, Any]:
        return {
            "source": self.weights_source.value,
            "package": self.spec.bundled_package if self.weights_source is WeightsSource.BUNDLED else None,
            "path": str(self.weights_path),
            "sha256": self.weights_sha256,
        }


def plan_model(options: ModelOptions, *, progress: bool = False) -> ModelPlan:
    """Resolve ``options`` to a :class:`ModelPlan`; no torch import (downloads when allowed).

    With no model named, DenseNet-121 when its weights are cached or downloadable, else the
    bundled EfficientNet-Lite0 with one warning. A model named explicitly never falls back.
    """
    labels = LabelSet(load_labels(options.labels), LabelsSource.FILE, options.labels) if options.labels else None
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
