"""GPU helpers for benchmarks/throughput.py: utilization sampling and a camera-sized corpus.

Nothing here runs without CUDA except :func:`build_camera_corpus`.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import threading
from pathlib import Path
from types import TracebackType


def build_camera_corpus(folder: Path, count: int, sources: list[Path], seed: int = 0) -> list[Path]:
    """``count`` camera-sized JPEGs (4032x3024, quality 90), scaled up from the sample photos."""
    from PIL import Image

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        with Image.open(sources[i % len(sources)]) as src:
            image = src.convert("RGB").resize((4032, 3024) if rng.random() < 0.8 else (3024, 4032))
        path = folder / f"cam{i:05d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


class UtilizationSampler:
    """Samples GPU utilization (%) every ``interval`` s while in its ``with`` block.

    ``torch.cuda.utilization()`` (needs pynvml) when it works, else ``nvidia-smi``; ``mean`` is
    None when neither is there.
    """

    def __init__(self, device_index: int = 0, interval: float = 0.2) -> None:
        self.device_index = device_index
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> float | None:
        try:
            import torch

            return float(torch.cuda.utilization(self.device_index))
        except Exception:
            pass
        if shutil.which("nvidia-smi") is None:
            return None
        out = subprocess.run(
            ["nvidia-smi", f"--id={self.device_index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        try:
            return float(out.stdout.strip().splitlines()[0])
        except (ValueError, IndexError):
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            value = self._read()
            if value is None:
                return
            self.samples.append(value)

    def __enter__(self) -> UtilizationSampler:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None
