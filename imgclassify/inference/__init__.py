"""Inference backends: one small interface, uint8 batch in, class probabilities out.

A backend takes a uint8 NCHW batch (the loader's output, on the CPU), normalizes it with the
model's mean/std, runs the forward pass on its device and returns float32 scores on the CPU: softmax
probabilities, or for a multi-label head sigmoid scores (:func:`~imgclassify.inference.normalize.scores`). Which class runs is decided once, in :func:`create_backend`, from
the :class:`Backend` kind, the precision and the device; out-of-memory halving wraps whichever
runs (:class:`~imgclassify.inference.oom.HalvingOnOutOfMemory`). A new backend is a new module
with one class and one row in :func:`create_backend`.

Importing this package does not import torch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from imgclassify.system.devices import Backend

__all__ = ["Backend", "InferenceBackend", "create_backend"]

if TYPE_CHECKING:
    import torch
    from torch import nn

    from imgclassify.decode.preprocess import PreprocessConfig
    from imgclassify.system.devices import Precision


@runtime_checkable
class InferenceBackend(Protocol):
    """uint8 NCHW batch (CPU) -> float32 probabilities (CPU), one row per image.

    Implementations pickle (a process that receives one rebuilds whatever cannot travel, such
    as a compiled OpenVINO model, on first use).
    """

    #: a short name for logs and the run manifest: "torch", "torch-frozen-fp32", "openvino"
    name: str

    @property
    def device(self) -> torch.device: ...

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...

    def plan(self, batch_size: int, batches: int) -> None:
        """A hint: about ``batches`` full batches of ``batch_size`` images will come."""


def create_backend(
    kind: Backend,
    model: nn.Module | None,
    *,
    preprocess: PreprocessConfig,
    device: torch.device,
    precision: Precision,
    model_name: str,
    weights_file: Path,
    onnx_file: Path | None = None,
    multi_label: bool = False,
) -> InferenceBackend:
    """The backend for ``kind`` at ``precision`` on ``device``, wrapped in out-of-memory halving.

    ``model``: the torch module (None for an ONNX file, ``onnx_file``). ``multi_label``: sigmoid
    scores, one per class, instead of softmax.
    """
    from imgclassify.errors import UsageError
    from imgclassify.inference.oom import HalvingOnOutOfMemory
    from imgclassify.system.advice import precision_warning
    from imgclassify.system.devices import Precision

    warning = precision_warning(precision, device.type)
    if warning:
        logging.getLogger("imgclassify").warning(warning)
    if onnx_file is not None and kind is Backend.TORCH:
        raise UsageError(f"{onnx_file.name} is an ONNX model: run it with --backend onnxruntime or openvino")
    backend: InferenceBackend
    if kind is Backend.ONNXRUNTIME:
        from imgclassify.inference.onnxruntime import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(
            model, preprocess=preprocess, device=device, precision=precision, model_name=model_name,
            weights_file=weights_file, onnx_file=onnx_file, multi_label=multi_label,
        )  # fmt: skip
    elif precision is Precision.INT8:  # with either --backend: quantized with NNCF, run by OpenVINO
        from imgclassify.inference.openvino_int8 import OpenVinoInt8Backend

        backend = OpenVinoInt8Backend(
            _torch_model(model, onnx_file, "--precision int8"), preprocess=preprocess, device=device,
            model_name=model_name, weights_file=weights_file, multi_label=multi_label,
        )  # fmt: skip
    elif kind is Backend.OPENVINO:
        from imgclassify.inference.openvino import OpenVinoBackend

        backend = OpenVinoBackend(
            _torch_model(model, onnx_file, "--backend openvino"), preprocess=preprocess, device=device,
            precision=precision, model_name=model_name, weights_file=weights_file, multi_label=multi_label,
        )  # fmt: skip
    else:
        from imgclassify.inference.torch_eager import TorchEagerBackend

        backend = TorchEagerBackend(
            _torch_model(model, onnx_file, "--backend torch"), preprocess=preprocess, device=device,
            precision=precision, multi_label=multi_label,
        )  # fmt: skip
        from imgclassify.inference.frozen import FrozenGraphBackend

        if device.type == "cpu" and FrozenGraphBackend.supports(precision):
            backend = FrozenGraphBackend(backend, model_name=model_name)
    return HalvingOnOutOfMemory(backend)


def _torch_model(model: nn.Module | None, onnx_file: Path | None, what: str) -> nn.Module:
    if model is None:
        from imgclassify.errors import UsageError

        raise UsageError(f"{what} runs PyTorch models; {onnx_file} is an ONNX file: use --backend onnxruntime")
    return model


__all__ = ["Backend", "InferenceBackend", "create_backend"]
