"""Class labels: index -> (wnid, name). A user's JSON file, the model's own names, the bundled
ImageNet-1k labels, or ``class_N``."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from imgclassify.errors import LabelsError
from imgclassify.system.digests import sha256_file, sha256_json


@dataclass(frozen=True)
class Label:
    wnid: str | None
    name: str


Labels = tuple[Label, ...]


def parse_labels(data: Any, source: str) -> Labels:
    """Accept ``{"0": ["n01440764", "tench"]}``, ``{"0": "tench"}`` or ``["tench", ...]``."""
    if isinstance(data, list):
        items = list(enumerate(data))
    elif isinstance(data, dict):
        try:
            items = sorted((int(k), v) for k, v in data.items())
        except ValueError as exc:
            raise LabelsError(f'{source}: keys must be class indices ("0", "1", ...): {exc}') from None
        if [i for i, _ in items] != list(range(len(items))):
            raise LabelsError(f"{source}: class indices must run 0..{len(items) - 1} with no gaps")
    else:
        raise LabelsError(f"{source}: expected a JSON object or list of labels, got {type(data).__name__}")
    if not items:
        raise LabelsError(f"{source}: no labels in the file")
    labels = []
    for index, value in items:
        if isinstance(value, str):
            labels.append(Label(None, value))
        elif isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
            labels.append(Label(value[0], value[1]))
        else:
            raise LabelsError(
                f"{source}: label {index} must be a name or a [wnid, name] pair, got {json.dumps(value)[:60]}"
            )
    return tuple(labels)


def load_labels(path: str | Path) -> Labels:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise LabelsError(f"cannot read labels file {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LabelsError(f"labels file {path} is not valid JSON: {exc}") from None
    return parse_labels(data, str(path))


@cache
def imagenet_labels() -> Labels:
    """The 1000 ImageNet-1k classes in the standard order, with their WordNet ids."""
    text = resources.files("imgclassify").joinpath("data/imagenet_labels.json").read_text()
    return parse_labels(json.loads(text), "bundled ImageNet labels")


def generic_labels(num_classes: int) -> Labels:
    return tuple(Label(None, f"class_{i}") for i in range(num_classes))


def check_count(labels: Labels, num_classes: int, source: str | Path | None) -> None:
    if len(labels) != num_classes:
        raise LabelsError(
            f"labels file {source} has {len(labels)} labels but the model has "
            f"{num_classes} classes: pass a labels file with one label per class"
        )


class LabelsSource(str, enum.Enum):
    IMAGENET = "bundled ImageNet-1k"
    FILE = "file"
    #: the model's own class names (transformers' ``id2label``, timm's ``label_names``)
    MODEL = "model"
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
        """The file the labels were read from: ``--labels``, the model's config, the bundled ImageNet file, or none."""
        if self.path is not None:
            return self.path
        if self.source is LabelsSource.IMAGENET:
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
