"""The run manifest: what produced an output file, written beside it as ``FILE.manifest.json``.

It holds imgclassify's version, the command line, the model and where its weights came from
(with their sha256), the labels (with theirs), the preprocessing actually used, the device,
precision, backend, batch size and top-k, the versions of the libraries, the engine, start and
end times (UTC, ISO 8601) and the counts. A run writes it at the start and completes it at the
end, also after SIGINT/SIGTERM, each time atomically (a temporary file, then a rename).

One typed :class:`Manifest` (its sections are dataclasses) is written, read back
(:meth:`Manifest.from_dict`, tolerant of manifests from older versions, keeping keys it does not
know) and compared (:meth:`Manifest.differences`): ``--resume`` and ``merge`` refuse to mix
records of different runs. The server returns the same provenance at ``GET /info``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from imgclassify.errors import UsageError
from imgclassify.system.fs import replaced_atomically

if TYPE_CHECKING:
    from imgclassify.models.plan import LabelSet, ModelPlan

MANIFEST_FORMAT = 1
MANIFEST_SUFFIX = ".manifest.json"
_LIBRARIES = ("torch", "torchvision", "timm", "pillow")

_S = TypeVar("_S", bound="Section")


class Section:
    """A manifest section: a dataclass written as a JSON object in field order.

    Fields named in ``OPTIONAL`` are left out while None (they appear only when they apply, such
    as ``counts.found_before_sharding``); keys read that no field knows (a newer version's) are
    kept in ``extra`` and written back.
    """

    OPTIONAL: ClassVar[frozenset[str]] = frozenset()
    extra: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            if item.name == "extra":
                continue
            value = getattr(self, item.name)
            if value is None and item.name in self.OPTIONAL:
                continue
            data[item.name] = value.to_dict() if isinstance(value, Section) else value
        data.update(self.extra)
        return data

    @classmethod
    def from_dict(cls: type[_S], data: Any, where: str) -> _S:
        if not isinstance(data, Mapping):
            raise ManifestFormatError(f"{where} should be a JSON object, got {data!r}")
        names = {item.name for item in dataclasses.fields(cls) if item.name != "extra"}  # type: ignore[arg-type]
        known = {name: data[name] for name in names if name in data}
        extra = {key: value for key, value in data.items() if key not in names}
        return cls(**known, extra=extra)  # type: ignore[call-arg]


class ManifestFormatError(UsageError):
    """A manifest that is not JSON, or not an imgclassify manifest."""


@dataclass
class ModelInfo(Section):
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"kind", "source", "files"})

    name: str | None = None
    family: str | None = None
    architecture: str | None = None
    #: how it is built (:class:`~imgclassify.models.kinds.ModelKind`): registry, timm, transformers, onnx, ...
    kind: str | None = None
    #: where it came from: {"repo", "revision", "commit"} for the Hub, {"path"} for a local file or folder, {"name"} for timm
    source: dict[str, Any] | None = None
    #: every other file it was loaded from (config.json, ...), each {"path", "sha256"}
    files: list[dict[str, str]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class WeightsInfo(Section):
    source: str | None = None
    package: str | None = None
    path: str | None = None
    sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LabelsInfo(Section):
    source: str | None = None
    path: str | None = None
    count: int | None = None
    #: the file's sha256, as ``sha256sum`` prints it
    sha256: str | None = None
    #: the labels' as parsed (same labels, same hash, whatever file): what ``--resume`` compares
    parsed_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def resume_sha256(self) -> str | None:
        """The parsed labels' hash; manifests from before ``parsed_sha256`` held it as ``sha256``."""
        if self.parsed_sha256 is None and self.count is not None:
            return self.sha256
        return self.parsed_sha256


@dataclass
class PreprocessingInfo(Section):
    resize: int | None = None
    crop: int | None = None
    interpolation: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    #: ``--fast-decode`` (kept beside ``decode_mode`` for readers from before it)
    fast_decode: bool | None = None
    #: how JPEGs were decoded (:class:`~imgclassify.decode.imaging.DecodeMode`): exact, reduced
    #: (the default: reduced scale from twice the resize size) or fast
    decode_mode: str | None = None
    allow_truncated: bool | None = None
    max_pixels: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> PreprocessingInfo:
        """A manifest from before ``decode_mode`` decoded exactly, or reduced-scale and fast with
        ``fast_decode``: its mode is read as that."""
        info = super().from_dict(data, where)
        if info.decode_mode is None and info.fast_decode is not None:
            info.decode_mode = "fast" if info.fast_decode else "exact"
        return info


@dataclass
class QuantizationInfo(Section):
    method: str | None = None
    calibration: str | None = None
    calibration_images: int | None = None
    calibration_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Provenance(Section):
    """The model's part of a manifest (also ``GET /info``): model, weights, labels, preprocessing,
    device, precision, backend and, for int8, the quantization."""

    model: ModelInfo = field(default_factory=ModelInfo)
    weights: WeightsInfo = field(default_factory=WeightsInfo)
    labels: LabelsInfo | None = None
    preprocessing: PreprocessingInfo = field(default_factory=PreprocessingInfo)
    device: str | None = None
    precision: str | None = None
    backend: str | None = None
    quantization: QuantizationInfo | None = None
    #: "softmax" (one class per image), or "sigmoid" for a multi-label head
    scores: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    KEYS: ClassVar[tuple[str, ...]] = (
        "model", "weights", "labels", "preprocessing", "device", "precision", "backend", "quantization", "scores",
    )  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Provenance:
        if not isinstance(data, Mapping):
            raise ManifestFormatError(f"{where} should be a JSON object, got {data!r}")
        return cls(
            model=ModelInfo.from_dict(data.get("model") or {}, f"{where}: model"),
            weights=WeightsInfo.from_dict(data.get("weights") or {}, f"{where}: weights"),
            labels=None if data.get("labels") is None else LabelsInfo.from_dict(data["labels"], f"{where}: labels"),
            preprocessing=PreprocessingInfo.from_dict(data.get("preprocessing") or {}, f"{where}: preprocessing"),
            device=data.get("device"),
            precision=data.get("precision"),
            backend=data.get("backend"),
            quantization=None
            if data.get("quantization") is None
            else QuantizationInfo.from_dict(data["quantization"], f"{where}: quantization"),
            scores=data.get("scores"),
        )

    @classmethod
    def of(cls, plan: ModelPlan, label_set: LabelSet | None, *, device: str | None = None) -> Provenance:
        """``plan``'s provenance. ``device``: the one the model runs on once loaded (else the one asked
        for, such as ``auto``)."""
        options, spec, pre = plan.options, plan.spec, plan.preprocess
        decode = options.decode
        return cls(
            model=ModelInfo(
                spec.name,
                spec.family,
                spec.architecture,
                kind=plan.kind.value,
                source=plan.source or None,
                files=plan.describe_files() or None,
            ),
            weights=WeightsInfo.from_dict(plan.describe_weights(), "weights"),
            labels=LabelsInfo.from_dict(label_set.describe(), "labels") if label_set is not None else None,
            preprocessing=PreprocessingInfo(
                resize=pre.resize_size,
                crop=pre.crop_size,
                interpolation=pre.interpolation.value,
                mean=list(pre.mean),
                std=list(pre.std),
                fast_decode=decode.fast,
                decode_mode=decode.mode.value,
                allow_truncated=decode.allow_truncated,
                max_pixels=decode.max_pixels,
            ),
            device=device or options.device,
            precision=options.precision.value,
            backend=options.backend.value,
            quantization=_quantization(plan),
            scores="sigmoid" if plan.multi_label else "softmax",
        )


@dataclass
class RunInfo(Section):
    """``run``: the options of the run (of ``merge``: ``merged_from`` and what it kept)."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"inputs", "merged_from"})

    batch_size: int | None = None
    top_k: int | None = None
    workers: int | None = None
    format: str | None = None
    output: str | None = None
    resume: bool | None = None
    max_failures: str | None = None
    shard: dict[str, int] | None = None
    threshold: float | None = None
    #: with ``--shard``: the inputs as given (what ``merge`` checks: every shard hashed the same paths)
    inputs: list[str] | None = None
    #: ``merge``: how many shards
    merged_from: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Counts(Section):
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"found_before_sharding"})

    inputs: int = 0
    classified: int = 0
    failed: int = 0
    skipped_non_images: int = 0
    already_done: int = 0
    #: with ``--shard``: the inputs found before keeping this shard's share
    found_before_sharding: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Resumed(Section):
    previous_started_at: str | None = None
    already_done: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    """A whole manifest. :meth:`to_dict` is the JSON written; :meth:`from_dict` reads one back."""

    imgclassify: str
    status: str
    command: list[str]
    started_at: str | None
    finished_at: str | None = None
    engine: dict[str, Any] = field(default_factory=dict)
    run: RunInfo = field(default_factory=RunInfo)
    #: None until the model is known (:meth:`RunManifest.start`)
    provenance: Provenance | None = None
    resumed: Resumed | None = None
    versions: dict[str, str | None] | None = None
    host: dict[str, Any] | None = None
    counts: Counts | None = None
    sort: dict[str, Any] | None = None
    elapsed_s: float | None = None
    format_version: int = MANIFEST_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "imgclassify_manifest": self.format_version,
            "imgclassify": self.imgclassify,
            "status": self.status,
            "command": self.command,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "engine": self.engine,
            "run": self.run.to_dict(),
        }
        if self.resumed is not None:
            data["resumed"] = self.resumed.to_dict()
        if self.provenance is not None:
            data.update(self.provenance.to_dict())
        if self.versions is not None:
            data["versions"] = self.versions
        if self.host is not None:
            data["host"] = self.host
        data["counts"] = None if self.counts is None else self.counts.to_dict()
        if self.sort is not None:
            data["sort"] = self.sort
        if self.elapsed_s is not None:
            data["elapsed_s"] = self.elapsed_s
        data.update(self.extra)
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest") -> Manifest:
        if not isinstance(data, Mapping) or "imgclassify_manifest" not in data:
            raise ManifestFormatError(
                f"{where} is not an imgclassify run manifest; move it away to continue without it"
            )
        known = {
            "imgclassify_manifest", "imgclassify", "status", "command", "started_at", "finished_at", "engine",
            "run", "resumed", "versions", "host", "counts", "sort", "elapsed_s", *Provenance.KEYS,
        }  # fmt: skip
        has_model = any(key in data for key in ("model", "weights", "preprocessing"))
        return cls(
            format_version=data["imgclassify_manifest"],
            imgclassify=str(data.get("imgclassify")),
            status=str(data.get("status")),
            command=list(data.get("command") or []),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            engine=dict(data.get("engine") or {}),
            run=RunInfo.from_dict(data.get("run") or {}, f"{where}: run"),
            provenance=Provenance.from_dict(data, where) if has_model else None,
            resumed=None if data.get("resumed") is None else Resumed.from_dict(data["resumed"], f"{where}: resumed"),
            versions=data.get("versions"),
            host=data.get("host"),
            counts=None if data.get("counts") is None else Counts.from_dict(data["counts"], f"{where}: counts"),
            sort=data.get("sort"),
            elapsed_s=data.get("elapsed_s"),
            extra={key: value for key, value in data.items() if key not in known},
        )

    @classmethod
    def read(cls, path: Path) -> Manifest | None:
        """The manifest at ``path``; None when there is none; a UsageError when it is unreadable."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UsageError(f"cannot read the manifest {path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestFormatError(
                f"{path} is not a valid manifest ({exc}); move it away to continue without it"
            ) from None
        return cls.from_dict(data, str(path))

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.to_dict())

    def differences(self, other: Manifest, *, compare_shard: bool = True) -> list[str]:
        """What differs between the run that wrote this manifest and ``other``, as ``"what: old -> new"``.

        What ``--resume`` and ``merge`` compare (:data:`RESUME_KEYS`). A value missing on either side
        (labels not known before loading) is not compared.
        """
        differences = []
        mine, theirs = self.provenance or Provenance(), other.provenance or Provenance()
        compared: tuple[tuple[str, Any, Any], ...] = (
            ("model", mine.model.name, theirs.model.name),
            ("model kind", mine.model.kind or "registry", theirs.model.kind or "registry"),
            # where a local file or folder lies is not compared (its files' hashes are): the Hub's repo and commit are
            ("model source", _where(mine.model.source), _where(theirs.model.source)),
            ("model files sha256", _hashes(mine.model.files), _hashes(theirs.model.files)),
            ("weights sha256", mine.weights.sha256, theirs.weights.sha256),
        )
        for label, before, after in compared:
            if before != after:
                differences.append(f"{label}: {_show(before)} -> {_show(after)}")
        if mine.labels is not None and theirs.labels is not None:
            old_labels, new_labels = mine.labels.resume_sha256(), theirs.labels.resume_sha256()
            if old_labels is not None and new_labels is not None and old_labels != new_labels:
                differences.append(f"labels sha256: {_show(old_labels)} -> {_show(new_labels)}")
        old_pre, new_pre = mine.preprocessing.to_dict(), theirs.preprocessing.to_dict()
        if old_pre.get("decode_mode") is not None and new_pre.get("decode_mode") is not None:
            for pre in (old_pre, new_pre):  # implied by decode_mode: one difference, not two
                pre.pop("fast_decode", None)
        for key in sorted(set(old_pre) | set(new_pre)):
            if old_pre.get(key) != new_pre.get(key):
                differences.append(f"{key}: {_show(old_pre.get(key))} -> {_show(new_pre.get(key))}")
        old_q = mine.quantization.calibration_sha256 if mine.quantization else None
        new_q = theirs.quantization.calibration_sha256 if theirs.quantization else None
        compared = (
            ("precision", mine.precision, theirs.precision),
            ("calibration sha256", old_q, new_q),
            ("backend", mine.backend, theirs.backend),
            ("scores", mine.scores or "softmax", theirs.scores or "softmax"),
            ("top-k", self.run.top_k, other.run.top_k),
            ("threshold", self.run.threshold, other.run.threshold),
            *([("shard", self.run.shard, other.run.shard)] if compare_shard else []),
        )
        for label, before, after in compared:
            if before != after:
                differences.append(f"{label}: {_show(before)} -> {_show(after)}")
        return differences


#: what must match for ``--resume`` to append to an output (compared by :meth:`Manifest.differences`)
RESUME_KEYS = (
    "model", "model kind", "model source", "model files sha256", "weights sha256", "labels sha256", "preprocessing", "precision", "calibration sha256", "backend",
    "scores", "top-k", "threshold", "shard",
)  # fmt: skip


def manifest_path_for(output: Path) -> Path:
    """``results.jsonl`` -> ``results.jsonl.manifest.json``."""
    return output.with_name(output.name + MANIFEST_SUFFIX)


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def library_versions(*, openvino: bool = False, nncf: bool = False) -> dict[str, str | None]:
    """Installed versions (from package metadata: nothing is imported)."""
    names = [*_LIBRARIES, *(["openvino"] if openvino or nncf else []), *(["nncf"] if nncf else [])]
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def host() -> dict[str, Any]:
    from imgclassify.system.capabilities import cpu_description

    return {"platform": platform.platform(terse=True), "machine": platform.machine(), "cpu": cpu_description()}


def describe_model(plan: ModelPlan, label_set: LabelSet | None, *, device: str | None = None) -> dict[str, Any]:
    """The model's part of the provenance as JSON (:meth:`Provenance.of`)."""
    return Provenance.of(plan, label_set, device=device).to_dict()


def _quantization(plan: ModelPlan) -> QuantizationInfo | None:
    """int8: how the model was quantized and on which calibration set (None for other precisions)."""
    from imgclassify.system.devices import Precision

    if plan.options.precision is not Precision.INT8:
        return None
    from imgclassify.inference.calibration import CALIBRATION_SIZE, calibration_sha256

    return QuantizationInfo(
        method="nncf post-training quantization, run by openvino",
        calibration="bundled",
        calibration_images=CALIBRATION_SIZE,
        calibration_sha256=calibration_sha256(plan.preprocess),
    )


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename."""
    with replaced_atomically(path, fsync=True) as tmp, open(tmp, "w", encoding="utf-8") as stream:
        json.dump(data, stream, indent=2, ensure_ascii=False)
        stream.write("\n")


def read_manifest(path: Path) -> Manifest | None:
    """:meth:`Manifest.read`."""
    return Manifest.read(path)


class RunManifest:
    """A manifest being written for one run: :meth:`start` then :meth:`finish`, each written atomically."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest

    @classmethod
    def new(cls, path: Path, *, command: list[str], engine: dict[str, Any], run: RunInfo) -> RunManifest:
        from imgclassify import __version__

        return cls(path, Manifest(__version__, "running", command, utc_now(), engine=engine, run=run))

    def start(self, provenance: Provenance, *, openvino: bool) -> None:
        manifest = self.manifest
        manifest.provenance = provenance
        versions = library_versions(openvino=openvino, nncf=provenance.quantization is not None)
        manifest.versions = {"imgclassify": manifest.imgclassify, **versions}
        manifest.host = host()
        manifest.write(self.path)

    def finished(self, status: str, counts: Counts, *, elapsed_s: float, engine: dict[str, Any]) -> dict[str, Any]:
        """The JSON :meth:`finish` would write now, not written (what a Parquet output embeds as it closes)."""
        return dataclasses.replace(
            self.manifest, status=status, finished_at=utc_now(), counts=counts, elapsed_s=elapsed_s, engine=engine
        ).to_dict()

    def finish(self, status: str, counts: Counts, *, elapsed_s: float, engine: dict[str, Any]) -> None:
        manifest = self.manifest
        manifest.status, manifest.finished_at, manifest.counts = status, utc_now(), counts
        manifest.elapsed_s, manifest.engine = elapsed_s, engine
        manifest.write(self.path)


def _where(source: dict[str, Any] | None) -> dict[str, Any] | None:
    return {k: v for k, v in source.items() if k != "path"} or None if source else None


def _hashes(files: list[dict[str, str]] | None) -> list[str] | None:
    return [str(item.get("sha256")) for item in files] if files else None


def _show(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True)
    return "none" if value is None else str(value)


#: options whose values may be secrets: the command line keeps their keys, never their values
SECRET_OPTIONS = ("--storage-option",)


def command_line() -> list[str]:
    """This process's command line, as a manifest records it: ``--storage-option KEY=VALUE`` shown
    as ``KEY=***`` (the values may be credentials)."""
    argv = list(sys.argv)
    if argv:
        argv[0] = os.path.basename(argv[0]) or argv[0]
        if argv[0] in ("__main__.py", "-m", "-c"):
            argv[0] = "imgclassify"
    for i, arg in enumerate(list(argv)):
        option, eq, value = arg.partition("=")
        if eq and option in SECRET_OPTIONS:  # --storage-option=KEY=VALUE
            argv[i] = f"{option}={value.partition('=')[0]}=***"
        elif i and sys.argv[i - 1] in SECRET_OPTIONS:  # --storage-option KEY=VALUE
            argv[i] = f"{arg.partition('=')[0]}=***"
    return argv
