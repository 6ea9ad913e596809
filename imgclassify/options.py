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

from imgclassify.decode.imaging import DecodeMode, DecodeOptions, decode_mode
from imgclassify.decode.preprocess import Interpolation, PreprocessConfig
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

    #: a registry name, ``timm:NAME``, ``hf:ORG/REPO[@REV]`` or a path (a model folder, ``.onnx``,
    #: TorchScript, ``.pt2``); None: densenet121, or the bundled efficientnet_lite0 when its weights cannot be had
    model: str | None = None
    #: a local checkpoint for the architecture (a state dict or ``.safetensors``)
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
    #: preprocessing overrides (None: the model's own): shorter side, center crop, interpolation, mean, std
    resize: int | None = None
    crop: int | None = None
    interpolation: Interpolation | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    #: sigmoid scores, one per class (None: as the model's config says; else softmax)
    multi_label: bool | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.interpolation is not None:
            set_(self, "interpolation", _enum(Interpolation, self.interpolation, "--interpolation"))
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                set_(self, name, parse_triple(value, f"--{name}", positive=name == "std"))
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UsageError(f"--{name} must be a whole number of pixels, at least 1, got {value!r}")
        set_(self, "precision", _enum(Precision, self.precision, "--precision"))
        set_(self, "backend", _enum(Backend, self.backend, "--backend"))
        set_(self, "device", validate_device(str(self.device)))
        for name in ("weights", "labels"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                set_(self, name, Path(value))

    def preprocess_overrides(self, model: PreprocessConfig) -> PreprocessConfig:
        """``model``'s preprocessing with the overrides asked for. ``--crop`` alone keeps the model's
        resize-to-crop ratio (224 of 256: ``--crop 288`` resizes to 329)."""
        crop = self.crop or model.crop_size
        resize = self.resize or (
            model.resize_size if self.crop is None else round(crop * model.resize_size / model.crop_size)
        )
        if resize < crop and (self.resize is not None or self.crop is not None):
            raise UsageError(
                f"--resize {resize} is smaller than the crop, {crop} pixels: the center crop would be padded; "
                "give a --resize at least as large as --crop"
            )
        return PreprocessConfig(
            resize_size=resize,
            crop_size=crop,
            interpolation=self.interpolation or model.interpolation,
            mean=self.mean or model.mean,
            std=self.std or model.std,
        )

    @property
    def allow_download(self) -> bool:
        return not (self.offline or offline_in_environment())

    def replace(self, **changes: Any) -> ModelOptions:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ModelOptions:
        """``IMGCLASSIFY_MODEL``, ``_WEIGHTS``, ``_LABELS``, ``_DEVICE``, ``_PRECISION``, ``_BACKEND``,
        ``_EXACT_DECODE``, ``_FAST_DECODE`` (both set: a UsageError), ``_ALLOW_TRUNCATED``, ``_MAX_PIXELS``,
        ``_OFFLINE``, ``_RESIZE``, ``_CROP``, ``_INTERPOLATION``, ``_MEAN``, ``_STD``, ``_MULTI_LABEL``."""
        env = os.environ if environ is None else environ
        values = read_env(env, {
            "model": str, "weights": Path, "labels": Path, "device": str, "precision": str, "backend": str,
            "resize": int, "crop": int, "interpolation": str, "mean": str, "std": str, "multi_label": bool,
        })  # fmt: skip
        decode = read_env(env, {"exact_decode": bool, "fast_decode": bool, "allow_truncated": bool, "max_pixels": int})
        mode = decode_mode(exact=decode.pop("exact_decode", False), fast=decode.pop("fast_decode", False))
        return cls(**values, decode=DecodeOptions(mode, **decode), offline=offline_in_environment(env))

    def to_env(self) -> dict[str, str]:
        """``IMGCLASSIFY_*`` variables that :meth:`from_env` turns back into these options."""
        decode = self.decode
        values: dict[str, Any] = {
            "model": self.model, "weights": self.weights, "labels": self.labels, "device": self.device,
            "precision": self.precision.value, "backend": self.backend.value,
            "exact_decode": decode.mode is DecodeMode.EXACT, "fast_decode": decode.mode is DecodeMode.FAST,
            "allow_truncated": decode.allow_truncated, "max_pixels": decode.max_pixels, "resize": self.resize,
            "crop": self.crop, "interpolation": self.interpolation.value if self.interpolation else None,
            "mean": ",".join(map(str, self.mean)) if self.mean else None,
            "std": ",".join(map(str, self.std)) if self.std else None, "multi_label": self.multi_label,
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


def parse_triple(value: Any, option: str, *, positive: bool = False) -> tuple[float, float, float]:
    """``"0.5,0.5,0.5"`` or three numbers -> a (r, g, b) tuple."""
    parts = [p for p in value.replace(" ", ",").split(",") if p] if isinstance(value, str) else list(value)
    try:
        numbers = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != 3 or (positive and min(numbers) <= 0):
        what = "three positive numbers" if positive else "three numbers"
        raise UsageError(f"{option} takes {what}, one per channel (such as 0.5,0.5,0.5), got {value!r}")
    return numbers


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
