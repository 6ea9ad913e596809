"""What this machine's processor can do, read at run time (not assumed from a tuning machine).

Read from ``/proc/cpuinfo`` on Linux (no torch import); elsewhere only what :mod:`platform` says.
Defaults that depend on the hardware (decode workers, precision advice) read these.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import cache

from imgclassify.system.runtime import available_cores


@dataclass(frozen=True)
class CpuFeatures:
    model: str
    cores: int
    avx2: bool
    avx512: bool
    #: native bfloat16 dot products (AVX-512 BF16), as on AMD Zen 4 and Intel Cooper Lake
    avx512_bf16: bool
    #: Intel AMX tiles (Sapphire Rapids and later): bf16 and int8 matrix units
    amx: bool
    #: int8 dot products (AVX-512 VNNI or AVX-VNNI)
    vnni: bool

    @property
    def fast_bf16(self) -> bool:
        """bf16 arithmetic in hardware: bf16 autocast then runs about twice as fast as fp32."""
        return self.avx512_bf16 or self.amx

    def flags(self) -> list[str]:
        names = ("avx2", "avx512", "avx512_bf16", "amx", "vnni")
        return [name for name in names if getattr(self, name)]


@cache
def cpu_features() -> CpuFeatures:
    flags: set[str] = set()
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as stream:
            for line in stream:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "flags" and not flags:
                    flags = set(value.split())
                elif key == "model name" and not model:
                    model = value.strip()
                if flags and model:
                    break
    except OSError:
        pass
    return CpuFeatures(
        model=model or platform.processor() or platform.machine(),
        cores=available_cores(),
        avx2="avx2" in flags,
        avx512="avx512f" in flags,
        avx512_bf16="avx512_bf16" in flags,
        amx="amx_tile" in flags or "amx_bf16" in flags,
        vnni="avx512_vnni" in flags or "avx_vnni" in flags,
    )


def cpu_description() -> str:
    """``Intel(R) Xeon(R) Processor @ 2.50GHz, 2 cores, avx2 avx512 vnni``."""
    cpu = cpu_features()
    return f"{cpu.model}, {cpu.cores} cores, {' '.join(cpu.flags()) or 'no vector extensions found'}"
