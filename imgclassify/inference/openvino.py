"""OpenVINO on the CPU (the ``imgclassify[openvino]`` extra).

The PyTorch model is converted once and cached on disk (keyed by model, input size, the
weights' sha256 and the OpenVINO version), then compiled for the CPU at the requested
precision. Normalization, scores (softmax or sigmoid) and records stay in the shared pipeline, so both backends
give the same records. The compiled model does not pickle: a process that receives this
backend compiles it again from the cache (or converts again) on first use.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclassify.errors import DeviceError, UsageError
from imgclassify.extras import install_hint
from imgclassify.inference.normalize import Normalizer, scores
from imgclassify.system.devices import Precision
from imgclassify.system.digests import sha256_file
from imgclassify.system.fs import replaced_together
from imgclassify.system.paths import cache_dir

if TYPE_CHECKING:
    import torch
    from torch import nn

    from imgclassify.decode.preprocess import PreprocessConfig

log = logging.getLogger("imgclassify")

OPENVINO_HINT = f"the openvino backend needs OpenVINO (the openvino extra): {install_hint('openvino')}"
_OV_PRECISION = {Precision.FP32: ("f32", "FP32"), Precision.BF16: ("bf16", "BF16"), Precision.FP16: ("f16", "FP16")}


def save_model_pair(ov: Any, model: Any, xml: Path, **options: Any) -> None:
    """``ov.save_model`` to ``xml`` and its ``.bin``, whole or not at all: the ``.bin`` is renamed
    into place first and the ``.xml`` (the file the cache checks for) last, so a reader never
    finds half a model, and an error or Ctrl-C while saving leaves no temporary behind."""
    with replaced_together([xml.with_suffix(".bin"), xml], fsync=True) as (_bin, tmp_xml):
        ov.save_model(model, tmp_xml, **options)  # its weights go to tmp_xml.with_suffix(".bin"): _bin


def _openvino() -> Any:
    try:
        import openvino as ov
    except ImportError:
        raise UsageError(OPENVINO_HINT) from None
    return ov


class OpenVinoBackend:
    name = "openvino"

    def __init__(
        self,
        model: nn.Module,
        *,
        preprocess: PreprocessConfig,
        device: torch.device,
        precision: Precision,
        model_name: str,
        weights_file: Path,
        multi_label: bool = False,
    ) -> None:
        ov = _openvino()
        if device.type != "cpu":
            raise DeviceError(
                f"the openvino backend runs on the CPU, not {device}: use --device cpu (or --backend torch)"
            )
        capability = _OV_PRECISION[precision][1]
        if capability not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise DeviceError(
                f"--precision {precision.value} is not supported by OpenVINO on this CPU: use fp32 "
                "(this CPU has no native bf16/fp16 arithmetic)"
            )
        self.model = model
        self.precision = precision
        self.multi_label = multi_label
        self.model_name = model_name
        self.crop_size = preprocess.crop_size
        self.normalize = Normalizer(preprocess, device, channels_last=False)
        key = f"{model_name}-{self.crop_size}-{sha256_file(weights_file)[:16]}-ov{ov.__version__.split('-')[0]}"
        self.xml = cache_dir() / "openvino" / f"{key}.xml"
        self._compiled: Any = None
        self._compile()

    @property
    def device(self) -> torch.device:
        return self.normalize.device

    def plan(self, batch_size: int, batches: int) -> None:
        pass

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_compiled"] = None
        return state

    def _compile(self) -> Any:
        ov = _openvino()
        if not self.xml.is_file():
            self._convert(ov)
        hint = _OV_PRECISION[self.precision][0]
        self._compiled = ov.Core().compile_model(
            str(self.xml), "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        )
        return self._compiled

    def _convert(self, ov: Any) -> None:
        import torch

        log.info("converting %s to OpenVINO (once; cached in %s)", self.model_name, self.xml.parent)
        example = torch.zeros(1, 3, self.crop_size, self.crop_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = ov.convert_model(
                self.model.to(memory_format=torch.contiguous_format), example_input=example,
                input=[(-1, 3, self.crop_size, self.crop_size)],
            )  # fmt: skip
        save_model_pair(ov, converted, self.xml)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        import torch

        compiled = self._compiled if self._compiled is not None else self._compile()
        with torch.inference_mode():
            x = self.normalize(batch).contiguous()
            logits = torch.from_numpy(compiled(x.numpy())[0])
            return scores(logits, self.multi_label)
