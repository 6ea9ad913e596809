"""Devices and numeric precisions: parsing, checking, and the one table mapping precisions to dtypes."""

from __future__ import annotations

import enum
import re
from typing import TYPE_CHECKING

from imgclassify.errors import DeviceError

if TYPE_CHECKING:
    import torch

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")


class Precision(str, enum.Enum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    #: int8 post-training quantization (OpenVINO + NNCF, on the CPU)
    INT8 = "int8"


def validate_device(text: str) -> str:
    """Check the syntax of a device string (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``)."""
    normalized = text.strip().lower()
    match = _DEVICE.match(normalized)
    if not match or (match.group(2) is not None and match.group(1) != "cuda"):
        raise DeviceError(f"invalid device {text!r}: use auto, cpu, cuda, cuda:N or mps")
    return normalized


def resolve_device(text: str) -> torch.device:
    """The torch device for ``text``; ``auto`` picks cuda, then mps, then cpu."""
    import torch

    name = validate_device(text)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {text!r} requested but CUDA is not available here: use --device cpu (or auto)")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {text!r}: only {torch.cuda.device_count()} CUDA device(s) here (cuda:0..)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("device 'mps' requested but Apple MPS is not available here: use --device cpu (or auto)")
    return torch.device(name)


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32), or a DeviceError."""
    import torch

    if precision is Precision.FP32:
        return None
    if precision is Precision.INT8:
        raise DeviceError("--precision int8 runs on the CPU through OpenVINO, not in torch: use --device cpu")
    if device.type == "cpu" and precision is Precision.FP16:
        raise DeviceError("--precision fp16 is not supported on the CPU: use bf16 (or fp32)")
    if device.type == "cuda" and precision is Precision.BF16 and not torch.cuda.is_bf16_supported():
        raise DeviceError("--precision bf16 is not supported by this GPU: use fp16 (or fp32)")
    return {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}[precision]


class Backend(str, enum.Enum):
    """What runs the forward pass (``--backend``); the backends themselves are in :mod:`imgclassify.inference`."""

    TORCH = "torch"
    OPENVINO = "openvino"
    #: ONNX Runtime: ``.onnx`` files (their default), or any model exported to ONNX once
    ONNXRUNTIME = "onnxruntime"
