"""Pooled features: any model the tool runs as a torch module, with its classifier taken off.

:func:`feature_module` turns a classifier into the module that returns its pooled features (the
input of its last layer, one vector per image): timm models through ``forward_features`` and
``forward_head(pre_logits=True)``, every other module (torchvision's architectures, the bundled
EfficientNet-Lite0 and DenseNet-121, transformers' models) with its last ``Linear`` of one row per
class replaced by ``Identity``; a fitted model (:class:`FittedNet`) gives its backbone's.
:class:`FittedNet` is what ``imgclassify fit`` writes, run: backbone features, then a head on the
(signed-power, centred, L2-normalized) features, one logit per category. Imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from imgclassify.errors import UsageError

if TYPE_CHECKING:
    from imgclassify.models.plan import ModelPlan


class TimmFeatures(nn.Module):
    """A timm model's pooled features: ``forward_head(forward_features(x), pre_logits=True)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.net.forward_features(x)  # type: ignore[operator]
        out: torch.Tensor = self.net.forward_head(features, pre_logits=True)  # type: ignore[operator]
        return out


class Flattened(nn.Module):
    """A module's output as one vector per image (a transformers model's ``logits``, a 4-D map's flattening)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        elif isinstance(out, dict):
            out = out["logits"]
        tensor: torch.Tensor = getattr(out, "logits", out)
        return tensor.flatten(1)


class FittedNet(nn.Module):
    """Backbone features -> signed ``power`` -> minus ``center`` -> L2-normalized -> the head: logit k is
    ``scale`` times the largest similarity (dot product) with the ``weight`` rows of category k
    (``members``), plus ``bias`` k. One row per category is a linear layer (logistic, centroid);
    one per example, the nearest example (see :mod:`imgclassify.fit.heads`)."""

    weight: torch.Tensor
    mask: torch.Tensor
    bias: torch.Tensor
    center: torch.Tensor

    def __init__(
        self,
        backbone: nn.Module,
        *,
        weight: torch.Tensor,
        members: torch.Tensor,
        bias: torch.Tensor,
        center: torch.Tensor,
        scale: float,
        power: float,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.scale, self.power = float(scale), float(power)
        categories = int(bias.shape[0])
        mask = torch.full((categories, int(weight.shape[0])), -1e9)
        mask[members.long(), torch.arange(int(weight.shape[0]))] = 0.0
        self.register_buffer("weight", weight.detach().to(torch.float32).clone())
        self.register_buffer("mask", mask)
        self.register_buffer("bias", bias.detach().to(torch.float32).clone())
        self.register_buffer("center", center.detach().to(torch.float32).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x).float()
        if self.power != 1.0:
            features = features.sign() * features.abs().pow(self.power)
        prepared = nn.functional.normalize(features - self.center, dim=1)
        similarity = prepared @ self.weight.T  # (N, rows)
        best = (similarity.unsqueeze(1) + self.mask).amax(dim=2)  # (N, categories)
        out: torch.Tensor = self.scale * best + self.bias
        return out


def feature_module(net: nn.Module, num_classes: int, *, name: str = "the model") -> nn.Module:
    """The module that gives ``net``'s pooled features (``net`` itself may be changed: load it afresh)."""
    if isinstance(net, FittedNet):
        return net.backbone
    if callable(getattr(net, "forward_features", None)) and callable(getattr(net, "forward_head", None)):
        return TimmFeatures(net).eval()
    last = None
    for parent in net.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Linear) and child.out_features == num_classes:
                last = (parent, child_name)
    if last is None:
        raise UsageError(
            f"{name}: no linear classifier with one output per class ({num_classes}) to take off: its pooled "
            "features cannot be found; embeddings need a timm, torchvision or transformers model (not an exported file)"
        )
    parent, child_name = last
    setattr(parent, child_name, nn.Identity())
    return Flattened(net).eval()


def load_module(plan: ModelPlan) -> tuple[nn.Module, int]:
    """The torch module of ``plan``'s model and its class count (what :func:`imgclassify.pipeline.build_net`
    builds, without the ONNX files: an ONNX model has no module to take features from)."""
    from imgclassify.models.kinds import ModelKind, load

    if plan.kind is ModelKind.REGISTRY:
        from imgclassify.models.architectures import build_with_state
        from imgclassify.models.weights import read_state_dict

        return build_with_state(plan.spec, read_state_dict(plan.weights_path))
    if plan.kind in (ModelKind.ONNX, ModelKind.TORCHSCRIPT, ModelKind.EXPORT):
        raise UsageError(
            f"{plan.spec.name} is an exported {plan.kind.value} file: it has no PyTorch module to take pooled "
            "features from; give a registry name, timm:NAME, hf:ORG/REPO or a model folder"
        )
    loaded = load(plan)
    assert loaded.net is not None
    return loaded.net, loaded.num_classes


def load_features(plan: ModelPlan) -> nn.Module:
    """``plan``'s model as a module that returns pooled features (one row per image)."""
    net, num_classes = load_module(plan)
    return feature_module(net, num_classes, name=plan.spec.name)
