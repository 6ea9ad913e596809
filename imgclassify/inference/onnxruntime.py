"""ONNX Runtime (``--backend onnxruntime``, the ``imgclassify[onnx]`` extra).

Runs an ``.onnx`` file given as ``--model``, or any PyTorch model exported to ONNX once and
cached on disk (keyed by model, input size and the weights' sha256, like OpenVINO's cache).
Normalization happens in the shared pipeline; the graph's output (logits) becomes
probabilities here, softmax or, for a multi-label head, sigmoid. A graph that fixes its batch
size runs in chunks of that size. The session does not pickle: a process that receives this
backend opens it again on first use.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclassify.errors import CheckpointError, DeviceError, UsageError
from imgclassify.extras import install_hint
from imgclassify.inference.normalize import Normalizer
from imgclassify.system.devices import Precision
from imgclassify.system.digests import sha256_file
from imgclassify.system.fs import replaced_atomically
from imgclassify.system.paths import cache_dir

if TYPE_CHECKING:
    import torch
    from torch import nn

    from imgclassify.decode.preprocess import PreprocessConfig

log = logging.getLogger("imgclassify")

ONNX_HINT = f"the onnxruntime backend needs ONNX Runtime (the onnx extra): {install_hint('onnx')}"


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UsageError(ONNX_HINT) from None
    return onnxruntime


def export_onnx(model: nn.Module, path: Path, crop_size: int) -> None:
    """``model`` as an ONNX graph with a dynamic batch dimension, written atomically to ``path``."""
    import torch

    example = torch.zeros(1, 3, crop_size, crop_size)
    with replaced_atomically(path, temp_suffix=".part") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.to(memory_format=torch.contiguous_format).eval(), (example,), str(tmp),
            input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )  # fmt: skip


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(
        self,
        model: nn.Module | None,
        *,
        preprocess: PreprocessConfig,
        device: torch.device,
        precision: Precision,
        model_name: str,
        weights_file: Path,
        onnx_file: Path | None = None,
        multi_label: bool = False,
    ) -> None:
        ort = _onnxruntime()
        if precision is not Precision.FP32:
            raise DeviceError(
                f"--backend onnxruntime runs the graph as exported (fp32); --precision {precision.value} is "
                "for the torch and openvino backends"
            )
        if device.type not in ("cpu", "cuda"):
            raise DeviceError(f"--backend onnxruntime runs on the CPU or CUDA, not {device.type}")
        if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise DeviceError(
                "--backend onnxruntime on CUDA needs onnxruntime-gpu (pip install onnxruntime-gpu); use --device cpu"
            )
        self.multi_label = multi_label
        self.normalize = Normalizer(preprocess, device if device.type == "cpu" else _cpu(), channels_last=False)
        self._device = device
        if onnx_file is None:
            if model is None:
                raise ValueError("OnnxRuntimeBackend needs a model or an ONNX file")
            key = f"{model_name.replace('/', '_').replace(':', '_')}-{preprocess.crop_size}-{sha256_file(weights_file)[:16]}"
            onnx_file = cache_dir() / "onnx" / f"{key}.onnx"
            if not onnx_file.is_file():
                log.info("exporting %s to ONNX (once; cached in %s)", model_name, onnx_file.parent)
                export_onnx(model, onnx_file, preprocess.crop_size)
        self.onnx_file = onnx_file
        self._session: Any = None
        session = self._open()
        outputs = session.get_outputs()
        shape = outputs[0].shape
        if len(shape) != 2 or not isinstance(shape[1], int):
            raise CheckpointError(
                f"{onnx_file}: the first output has shape {shape}, not (batch, classes): not an image classifier"
            )
        #: the class count, from the graph's output
        self.num_classes: int = shape[1]
        batch = session.get_inputs()[0].shape[0]
        #: the batch size the graph fixes (None: dynamic)
        self.fixed_batch: int | None = batch if isinstance(batch, int) else None

    @property
    def device(self) -> torch.device:
        return self._device

    def plan(self, batch_size: int, batches: int) -> None:
        pass

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None
        return state

    def _open(self) -> Any:
        ort = _onnxruntime()
        providers = ["CUDAExecutionProvider"] if self._device.type == "cuda" else []
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings are not for our stderr
        try:
            self._session = ort.InferenceSession(
                str(self.onnx_file), sess_options=options, providers=[*providers, "CPUExecutionProvider"]
            )
        except Exception as exc:
            detail = " ".join(str(exc).split())[:300]
            raise CheckpointError(f"ONNX Runtime cannot load {self.onnx_file}: {detail}") from None
        self._input = self._session.get_inputs()[0].name
        return self._session

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        import numpy as np
        import torch

        session = self._session if self._session is not None else self._open()
        x = self.normalize(batch).contiguous().numpy()
        step = self.fixed_batch or len(x)
        parts = []
        for start in range(0, len(x), step):
            chunk = x[start : start + step]
            n = len(chunk)
            if n < step:  # a graph with a fixed batch: pad the last chunk
                chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), dtype=chunk.dtype)])
            parts.append(session.run(None, {self._input: chunk})[0][:n])
        logits = torch.from_numpy(np.concatenate(parts).astype(np.float32, copy=False))
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)


def _cpu() -> torch.device:
    import torch

    return torch.device("cpu")
