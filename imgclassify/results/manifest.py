"""The run manifest: what produced an output file, written beside it as ``FILE.manifest.json``.

It holds imgclassify's version, the command line, the model and where its weights came from
(with their sha256), the labels (with theirs), the preprocessing actually used, the device,
precision, backend, batch size and top-k, the versions of the libraries, the engine, start and
end times (UTC, ISO 8601) and the counts. A run writes it at the start and completes it at the
end, also after SIGINT/SIGTERM, each time atomically (a temporary file, then a rename).
``--resume`` reads it back and refuses to mix records of different runs
(:func:`resume_differences`). The server returns the same provenance at ``GET /info``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclassify.errors import UsageError
from imgclassify.system.fs import replaced_atomically

if TYPE_CHECKING:
    from imgclassify.models.plan import LabelSet, ModelPlan

MANIFEST_FORMAT = 1
MANIFEST_SUFFIX = ".manifest.json"
_LIBRARIES = ("torch", "torchvision", "timm", "pillow")


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
    """The model's part of the provenance: model, weights, labels, preprocessing, device/precision/backend.

    ``device``: the device the model runs on, once loaded (else the one asked for, such as ``auto``).
    """
    options, spec, pre = plan.options, plan.spec, plan.preprocess
    decode = options.decode
    return {
        "model": {"name": spec.name, "family": spec.family, "architecture": spec.architecture},
        "weights": plan.describe_weights(),
        "labels": label_set.describe() if label_set is not None else None,
        "preprocessing": {
            "resize": pre.resize_size,
            "crop": pre.crop_size,
            "interpolation": pre.interpolation.value,
            "mean": list(pre.mean),
            "std": list(pre.std),
            "fast_decode": decode.fast,
            "allow_truncated": decode.allow_truncated,
            "max_pixels": decode.max_pixels,
        },
        "device": device or options.device,
        "precision": options.precision.value,
        "backend": options.backend.value,
        "quantization": describe_quantization(plan),
    }


def describe_quantization(plan: ModelPlan) -> dict[str, Any] | None:
    """int8: how the model was quantized and on which calibration set (None for other precisions)."""
    from imgclassify.system.devices import Precision

    if plan.options.precision is not Precision.INT8:
        return None
    from imgclassify.inference.calibration import CALIBRATION_SIZE, calibration_sha256

    return {
        "method": "nncf post-training quantization, run by openvino",
        "calibration": "bundled",
        "calibration_images": CALIBRATION_SIZE,
        "calibration_sha256": calibration_sha256(plan.preprocess),
    }


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename."""
    with replaced_atomically(path, fsync=True) as tmp, open(tmp, "w", encoding="utf-8") as stream:
        json.dump(data, stream, indent=2, ensure_ascii=False)
        stream.write("\n")


def read_manifest(path: Path) -> dict[str, Any] | None:
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
        raise UsageError(f"{path} is not a valid manifest ({exc}); move it away to continue without it") from None
    if not isinstance(data, dict) or "imgclassify_manifest" not in data:
        raise UsageError(f"{path} is not an imgclassify run manifest; move it away to continue without it")
    return data


class RunManifest:
    """A manifest being written for one run: :meth:`start` then :meth:`finish`."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    @classmethod
    def new(cls, path: Path, *, command: list[str], engine: dict[str, Any], run: dict[str, Any]) -> RunManifest:
        from imgclassify import __version__

        data: dict[str, Any] = {
            "imgclassify_manifest": MANIFEST_FORMAT,
            "imgclassify": __version__,
            "status": "running",
            "command": command,
            "started_at": utc_now(),
            "finished_at": None,
            "engine": engine,
            "run": run,
        }
        return cls(path, data)

    def start(self, model: Mapping[str, Any], *, openvino: bool) -> None:
        self.data.update(model)
        int8 = model.get("quantization") is not None
        versions = library_versions(openvino=openvino, nncf=int8)
        self.data["versions"] = {"imgclassify": self.data["imgclassify"], **versions}
        self.data["host"] = host()
        self.data["counts"] = None
        write_json_atomic(self.path, self.data)

    def finish(self, status: str, counts: Mapping[str, int], **extra: Any) -> None:
        self.data.update(status=status, finished_at=utc_now(), counts=dict(counts), **extra)
        write_json_atomic(self.path, self.data)


#: what must match for ``--resume`` to append to an output: (label, path into the manifest)
RESUME_KEYS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("model", ("model", "name")),
    ("weights sha256", ("weights", "sha256")),
    ("labels sha256", ("labels", "parsed_sha256")),
    ("preprocessing", ("preprocessing",)),
    ("precision", ("precision",)),
    ("calibration sha256", ("quantization", "calibration_sha256")),
    ("backend", ("backend",)),
    ("top-k", ("run", "top_k")),
    ("threshold", ("run", "threshold")),
    ("shard", ("run", "shard")),
)


def _get(data: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = data
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _show(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True)
    return "none" if value is None else str(value)


def resume_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between the run that wrote an output and this one, as ``"what: old -> new"``.

    A value missing on either side (labels not known before loading) is not compared here.
    """
    differences = []
    for label, path in RESUME_KEYS:
        before, after = _get(old, path), _get(new, path)
        if label == "labels sha256" and before is None and _get(old, ("labels", "count")) is not None:
            before = _get(old, ("labels", "sha256"))  # written before parsed_sha256 existed: it was the parsed one
        if label == "labels sha256" and (before is None or after is None):
            continue
        if label == "preprocessing" and isinstance(before, Mapping) and isinstance(after, Mapping):
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            differences += [f"{k}: {_show(before.get(k))} -> {_show(after.get(k))}" for k in changed]
            continue
        if before != after:
            differences.append(f"{label}: {_show(before)} -> {_show(after)}")
    return differences


def command_line() -> list[str]:
    argv = list(sys.argv)
    if argv:
        argv[0] = os.path.basename(argv[0]) or argv[0]
        if argv[0] in ("__main__.py", "-m", "-c"):
            argv[0] = "imgclassify"
    return argv
