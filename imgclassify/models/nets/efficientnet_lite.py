"""EfficientNet-Lite0 as timm's ``tf_efficientnet_lite0``, with timm's state-dict keys.

TensorFlow "SAME" padding (strided convolutions pad the input asymmetrically as timm's
``Conv2dSame`` does; stride-1 ones pad symmetrically), BatchNorm eps 1e-3, ReLU6, no
squeeze-excitation; a depthwise-separable first block, then inverted residuals.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_BN_EPS = 1e-3  # timm's tf_ models: TensorFlow's default
#: (repeats, kernel, stride, expansion, out channels) per stage: timm's arch_def for the Lite models
_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_STEM = 32
_FEATURES = 1280


def _same_pad(size: int, kernel: int, stride: int) -> int:
    return max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)


class Conv2dSame(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding computed from the input (timm's ``Conv2dSame``)."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, groups: int = 1) -> None:
        super().__init__(in_chs, out_chs, kernel, stride, 0, 1, groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.size()[-2:]
        kh, kw = self.weight.shape[-2:]
        pad_h = _same_pad(ih, kh, self.stride[0])
        pad_w = _same_pad(iw, kw, self.stride[1])
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0)
        return F.conv2d(x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)


def _conv(in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """timm's ``create_conv2d(..., padding='same')``: static padding when stride 1, else dynamic."""
    if stride == 1:
        return nn.Conv2d(in_chs, out_chs, kernel, 1, (kernel - 1) // 2, groups=groups, bias=False)
    return Conv2dSame(in_chs, out_chs, kernel, stride, groups)


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm (eps 1e-3) followed by ReLU6 or nothing, with BatchNorm2d's keys (timm's ``BatchNormAct2d``)."""

    def __init__(self, channels: int, act: bool) -> None:
        super().__init__(channels, eps=_BN_EPS)
        self.act: nn.Module = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(super().forward(x))
        return out


class DepthwiseSeparableConv(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_dw = _conv(in_chs, in_chs, kernel, stride, groups=in_chs)
        self.bn1 = BatchNormAct2d(in_chs, act=True)
        self.conv_pw = _conv(in_chs, out_chs, 1)
        self.bn2 = BatchNormAct2d(out_chs, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.bn1(self.conv_dw(x))
        x = self.bn2(self.conv_pw(x))
        return x + shortcut if self.has_skip else x


class InvertedResidual(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = in_chs * expansion
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_pw = _conv(in_chs, mid, 1)
        self.bn1 = BatchNormAct2d(mid, act=True)
        self.conv_dw = _conv(mid, mid, kernel, stride, groups=mid)
        self.bn2 = BatchNormAct2d(mid, act=True)
        self.conv_pwl = _conv(mid, out_chs, 1)
        self.bn3 = BatchNormAct2d(out_chs, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.bn1(self.conv_pw(x))
        x = self.bn2(self.conv_dw(x))
        x = self.bn3(self.conv_pwl(x))
        return x + shortcut if self.has_skip else x


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv_stem = _conv(3, _STEM, 3, 2)
        self.bn1 = BatchNormAct2d(_STEM, act=True)
        stages: list[nn.Module] = []
        chs = _STEM
        for repeats, kernel, stride, expansion, out_chs in _STAGES:
            blocks: list[nn.Module] = []
            for index in range(repeats):
                s = stride if index == 0 else 1
                if expansion == 1:
                    blocks.append(DepthwiseSeparableConv(chs, out_chs, kernel, s))
                else:
                    blocks.append(InvertedResidual(chs, out_chs, kernel, s, expansion))
                chs = out_chs
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = _conv(chs, _FEATURES, 1)
        self.bn2 = BatchNormAct2d(_FEATURES, act=True)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(_FEATURES, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv_stem(x))
        x = self.blocks(x)
        x = self.bn2(self.conv_head(x))
        x = torch.flatten(self.global_pool(x), 1)
        out: torch.Tensor = self.classifier(x)
        return out
