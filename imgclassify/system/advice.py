"""Defaults and advice from what this machine can do, detected at run time (never one machine's numbers).

:func:`precision_warning` says when a precision asked for has no hardware behind it (bf16 without
AVX-512 BF16 or AMX is emulated by torch and refused by OpenVINO; int8 without VNNI or AMX gains
little).
"""

from __future__ import annotations

from imgclassify.system.capabilities import CpuFeatures, cpu_features
from imgclassify.system.devices import Precision


def fast_int8(cpu: CpuFeatures) -> bool:
    """int8 dot products in hardware (AVX-512 VNNI, AVX-VNNI or AMX)."""
    return cpu.vnni or cpu.amx


def speed_precision(cpu: CpuFeatures) -> Precision:
    """The fastest precision this CPU runs natively (fp32 stays the default: it is exact)."""
    if fast_int8(cpu):
        return Precision.INT8
    return Precision.BF16 if cpu.fast_bf16 else Precision.FP32


def precision_warning(precision: Precision, device_type: str, cpu: CpuFeatures | None = None) -> str | None:
    """A warning when ``precision`` has no hardware behind it on this CPU, naming what to use instead."""
    if device_type != "cpu":
        return None
    cpu = cpu or cpu_features()
    if precision is Precision.BF16 and not cpu.fast_bf16:
        instead = "--precision int8 (this CPU has int8 dot products)" if fast_int8(cpu) else "fp32"
        return (
            "this CPU has no bf16 arithmetic (no AVX-512 BF16, no AMX): --precision bf16 is emulated "
            f"and likely slower than fp32; use {instead}"
        )
    if precision is Precision.INT8 and not fast_int8(cpu):
        return "this CPU has no int8 dot products (no VNNI, no AMX): --precision int8 may gain little over fp32"
    return None
