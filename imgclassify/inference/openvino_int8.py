"""OpenVINO int8 on the CPU: post-training quantization with NNCF (``--precision int8``).

The fp32 OpenVINO model (converted once, as for ``--backend openvino``) is quantized with
``nncf.quantize`` on the bundled calibration set (:mod:`imgclassify.inference.calibration`), once; the
result is cached on disk, keyed by model, input size, the weights' sha256, the calibration
set's sha256 and the OpenVINO and NNCF versions, so only the first run pays for it. int8
convolutions use VNNI (AVX-512 VNNI / AVX-VNNI) or AMX where the CPU has them; without them
OpenVINO still runs int8, more slowly.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclassify.errors import DeviceError, UsageError
from imgclassify.extras import install_hint
from imgclassify.inference.calibration import CALIBRATION_SIZE, calibration_sha256, calibration_views
from imgclassify.inference.normalize import Normalizer
from imgclassify.inference.openvino import OpenVinoBackend, _openvino, save_model_pair
from imgclassify.system.digests import sha256_file
from imgclassify.system.paths import cache_dir

if TYPE_CHECKING:
    import torch
    from torch import nn

    from imgclassify.decode.preprocess import PreprocessConfig

log = logging.getLogger("imgclassify")

NNCF_HINT = f"--precision int8 needs OpenVINO and NNCF (the openvino extra): {install_hint('openvino')}"


def nncf_version() -> str | None:
    try:
        return metadata.version("nncf")
    except metadata.PackageNotFoundError:
        return None


class OpenVinoInt8Backend(OpenVinoBackend):
    name = "openvino-int8"

    def __init__(
        self,
        model: nn.Module,
        *,
        preprocess: PreprocessConfig,
        device: torch.device,
        model_name: str,
        weights_file: Path,
        multi_label: bool = False,
    ) -> None:
        ov = _openvino()
        nncf = nncf_version()
        if nncf is None:
            raise UsageError(NNCF_HINT)
        if device.type != "cpu":
            raise DeviceError(f"--precision int8 runs on the CPU, not {device}: use --device cpu (or auto)")
        from imgclassify.system.devices import Precision

        self.model = model
        self.precision = Precision.INT8
        self.multi_label = multi_label
        self.model_name = model_name
        self.crop_size = preprocess.crop_size
        self.preprocess = preprocess
        self.normalize = Normalizer(preprocess, device, channels_last=False)
        self.calibration_sha256 = calibration_sha256(preprocess)
        version = ov.__version__.split("-")[0]
        base = f"{model_name}-{self.crop_size}-{sha256_file(weights_file)[:16]}-ov{version}"
        self.xml = cache_dir() / "openvino" / f"{base}.xml"
        self.int8_xml = cache_dir() / "openvino-int8" / f"{base}-cal{self.calibration_sha256[:16]}-nncf{nncf}.xml"
        self._compiled: Any = None
        self._compile()

    def _compile(self) -> Any:
        ov = _openvino()
        if not self.int8_xml.is_file():
            self._quantize(ov)
        self._compiled = ov.Core().compile_model(
            str(self.int8_xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        )
        return self._compiled

    def _quantize(self, ov: Any) -> None:
        import nncf
        import numpy as np
        import torch

        if not self.xml.is_file():
            self._convert(ov)
        log.info(
            "quantizing %s to int8 on %d calibration images (once; cached in %s)",
            self.model_name, CALIBRATION_SIZE, self.int8_xml.parent,
        )  # fmt: skip
        fp32 = ov.Core().read_model(str(self.xml))
        inputs = []
        for view in calibration_views(self.preprocess):
            x = self.normalize(torch.from_numpy(view).unsqueeze(0))
            inputs.append(np.ascontiguousarray(x.numpy()))
        # stdout carries records only: NNCF logs and draws its progress bars on stdout
        nncf_log = logging.getLogger("nncf")
        level = nncf_log.level
        nncf_log.setLevel(logging.CRITICAL + 1)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                quantized = nncf.quantize(
                    fp32, nncf.Dataset(inputs), subset_size=len(inputs), preset=nncf.QuantizationPreset.MIXED,
                    fast_bias_correction=True,
                )  # fmt: skip
        finally:
            nncf_log.setLevel(level)
        save_model_pair(ov, quantized, self.int8_xml, compress_to_fp16=False)
