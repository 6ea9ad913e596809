"""The model options: one type for ``predict``, ``serve``, the server's environment and the API.

:class:`ModelOptions` says which model to load and how (weights, labels, device, precision,
backend, decoding, downloads). It is frozen and pickles, so another process (a server worker,
a Ray actor) can receive it and load the same classifier.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgclassify.decode.imaging import DecodeOptions
from imgclassify.errors import UsageError
from imgclassify.system.devices import Backend, Precision, validate_device

#: downloads are off when this environment variable is set (as with ``--offline``)
OFFLINE_ENV = "IMGCLASSIFY_OFFLINE"
ENV_PREFIX = "IMGCLASSIFY_"


def offline_in_environment(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


@dataclass(frozen=True)
class ModelOptions:
    """Which model to load, and how. Strings are accepted for the enums and paths."""

    #: a registry name; None: densenet121, or the bundled efficientnet_lite0 when its weights cannot be had
    model: str | None = None
    #: a local checkpoint for the architecture
    weights: Path | None = None
    #: a labels JSON file; None: ImageNet-1k for 1000 classes, else class_0, class_1, ...
    labels: Path | None = None
    #: auto, cpu, cuda, cuda:N, mps
    device: str = "auto"
    precision: Precision = Precision.FP32
    backend: Backend = Backend.TORCH
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    #: never download weights (IMGCLASSIFY_OFFLINE=1 in the environment means the same)
    offline: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "precision", _enum(Precision, self.precision, "--precision"))
        set_(self, "backend", _enum(Backend, self.backend, "--backend"))
        set_(self, "device", validate_device(str(self.device)))
        for name in ("weights", "labels"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                set_(self, name, Path(value))

    @property
    def allow_download(self) -> bool:
        return not (self.offline or offline_in_environment())

    def replace(self, **changes: Any) -> ModelOptions:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ModelOptions:
        """``IMGCLASSIFY_MODEL``, ``_WEIGHTS``, ``_LABELS``, ``_DEVICE``, ``_PRECISION``, ``_BACKEND``,
        ``_FAST_DECODE``, ``_ALLOW_TRUNCATED``, ``_MAX_PIXELS``, ``_OFFLINE``."""
        env = os.environ if environ is None else environ
        values = read_env(env, {
            "model": str, "weights": Path, "labels": Path, "device": str, "precision": str, "backend": str,
        })  # fmt: skip
        decode = read_env(env, {"fast_decode": bool, "allow_truncated": bool, "max_pixels": int})
        if "fast_decode" in decode:
            decode["fast"] = decode.pop("fast_decode")
        return cls(**values, decode=DecodeOptions(**decode), offline=offline_in_environment(env))

    def to_env(self) -> dict[str, str]:
        """``IMGCLASSIFY_*`` variables that :meth:`from_env` turns back into these options."""
        decode = self.decode
        values: dict[str, Any] = {
            "model": self.model, "weights": self.weights, "labels": self.labels, "device": self.device,
            "precision": self.precision.value, "backend": self.backend.value, "fast_decode": decode.fast,
            "allow_truncated": decode.allow_truncated, "max_pixels": decode.max_pixels,
        }  # fmt: skip
        if self.offline:  # else leave the environment's own IMGCLASSIFY_OFFLINE alone
            values["offline"] = True
        return {
            ENV_PREFIX + name.upper(): ""
            if value is None
            else ("1" if value else "0")
            if isinstance(value, bool)
            else str(value)
            for name, value in values.items()
        }


def read_env(env: Mapping[str, str], kinds: Mapping[str, type]) -> dict[str, Any]:
    """``IMGCLASSIFY_<NAME>`` variables for ``kinds`` ({name: str/int/float/bool/Path}), set ones only."""
    values: dict[str, Any] = {}
    for name, kind in kinds.items():
        variable = ENV_PREFIX + name.upper()
        raw = env.get(variable)
        if raw is None or raw.strip() == "":
            continue
        if kind is bool:
            values[name] = raw.strip().lower() in ("1", "true", "yes", "on")
            continue
        try:
            values[name] = kind(raw)
        except ValueError:
            raise UsageError(f"{variable}={raw!r} is not a valid {kind.__name__}") from None
    return values


def _enum(kind: type[Any], value: Any, option: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise UsageError(f"{option}: {value!r} is not one of {choices}") from None
