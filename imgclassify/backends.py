"""Inference backends: PyTorch eager (default) and OpenVINO (optional extra, CPU).

The OpenVINO backend converts the loaded PyTorch model once, caches the converted model on disk
(keyed by model, weights file, input size and OpenVINO version) so later runs start fast, and
compiles it for the CPU at the requested precision. Preprocessing, normalization, softmax and
records stay in the shared pipeline: both backends give the same records.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .devices import Precision
from .errors import DeviceError, UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger("imgclassify")

OPENVINO_HINT = (
    "the openvino backend needs OpenVINO: pipx install 'imgclassify[openvino]' (or: pipx inject imgclassify openvino)"
)
_OV_PRECISION = {Precision.FP32: ("f32", "FP32"), Precision.BF16: ("bf16", "BF16"), Precision.FP16: ("f16", "FP16")}


class Backend(str, enum.Enum):
    TORCH = "torch"
    OPENVINO = "openvino"


def cache_dir() -> Path:
    root = os.environ.get("IMGCLASSIFY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "imgclassify"
    )
    return Path(root)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def openvino_forward(
    model: nn.Module,
    *,
    name: str,
    weights_file: Path,
    crop_size: int,
    precision: Precision,
    device: torch.device,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function mapping a normalized float NCHW batch to logits, run by OpenVINO on the CPU."""
    try:
        import openvino as ov
    except ImportError:
        raise UsageError(OPENVINO_HINT) from None
    import torch

    if device.type != "cpu":
        raise DeviceError(f"the openvino backend runs on the CPU, not {device}: use --device cpu (or --backend torch)")
    core = ov.Core()
    hint, capability = _OV_PRECISION[precision]
    if capability not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise DeviceError(f"--precision {precision.value} is not supported by OpenVINO on this CPU: use fp32")
    key = f"{name}-{crop_size}-{_file_digest(weights_file)}-ov{ov.__version__.split('-')[0]}"
    xml = cache_dir() / "openvino" / f"{key}.xml"
    if not xml.is_file():
        log.info("converting %s to OpenVINO (once; cached in %s)", name, xml.parent)
        example = torch.zeros(1, 3, crop_size, crop_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = ov.convert_model(model.to(memory_format=torch.contiguous_format), example_input=example,
                                         input=[(-1, 3, crop_size, crop_size)])  # fmt: skip
        xml.parent.mkdir(parents=True, exist_ok=True)
        tmp = xml.with_suffix(f".tmp{os.getpid()}.xml")
        ov.save_model(converted, tmp)
        os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp, xml)
    compiled = core.compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"})

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(compiled(x.contiguous().numpy())[0])

    return forward
