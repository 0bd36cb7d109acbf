"""ResNet-18 (Bi-Real style, METHOD.md §3 [code]) and ResNet-50 (the same rules on bottlenecks [choice]).

Full precision: the 7×7 stem conv, the 1×1 downsample convs of the shortcuts, and the final FC.
Binary: every 3×3 conv (ResNet-18: exactly 16) and every conv of a bottleneck (ResNet-50: 48).
"""
from __future__ import annotations

import torch
from torch import nn

from sibnn.catalog import RHO_DEFAULT
from sibnn.layers import BinaryConv2d
from sibnn.models.common import fp_conv, init_fp_layers_
from sibnn.models.registry import register_model


class BinaryConvUnit(nn.Module):
    """BN → binarize → binary conv → BN, optionally with its own shortcut (Bi-Real: one per 3×3 conv)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, binarizer, rho, shortcut: nn.Module | None):
        super().__init__()
        self.bn_in = nn.BatchNorm2d(in_channels)
        self.conv = BinaryConv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, binarizer, rho)
        self.bn_out = nn.BatchNorm2d(out_channels)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn_out(self.conv(self.bn_in(x)))
        return out if self.shortcut is None else out + self.shortcut(x)


def downsample_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Shape-changing shortcut: FP conv1×1 (stride 1) → BN → avgpool 2×2 (when striding). Identity otherwise."""
    if in_channels == out_channels and stride == 1:
        return nn.Identity()
    layers: list[nn.Module] = []
    if in_channels != out_channels:
        layers += [fp_conv(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels)]
    if stride != 1:
        # ceil_mode keeps the shortcut's size equal to the strided conv's on odd inputs (small test images).
        layers.append(nn.AvgPool2d(stride, ceil_mode=True, count_include_pad=False))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3×3 units, each with its own shortcut."""

    def __init__(self, in_channels, out_channels, stride, binarizer, rho):
        super().__init__()
        self.unit1 = BinaryConvUnit(in_channels, out_channels, 3, stride, binarizer, rho,
                                    downsample_shortcut(in_channels, out_channels, stride))
        self.unit2 = BinaryConvUnit(out_channels, out_channels, 3, 1, binarizer, rho, nn.Identity())

    def forward(self, x):
        return self.unit2(self.unit1(x))


class Bottleneck(nn.Module):
    """1×1 → 3×3 → 1×1 units; the 3×3 keeps its own shortcut (channels match), the block has one around all
    three [choice: the Bi-Real rule where shapes allow it, the block shortcut where they do not]."""

    expansion = 4

    def __init__(self, in_channels, width, stride, binarizer, rho):
        super().__init__()
        out_channels = width * self.expansion
        self.unit1 = BinaryConvUnit(in_channels, width, 1, 1, binarizer, rho, None)
        self.unit2 = BinaryConvUnit(width, width, 3, stride, binarizer, rho, downsample_shortcut(width, width, stride))
        self.unit3 = BinaryConvUnit(width, out_channels, 1, 1, binarizer, rho, None)
        self.shortcut = downsample_shortcut(in_channels, out_channels, stride)

    def forward(self, x):
        return self.unit3(self.unit2(self.unit1(x))) + self.shortcut(x)


class ResNet(nn.Module):
    def __init__(self, block, depths, binarizer="sibnn", rho=RHO_DEFAULT, num_classes=1000, in_channels=3):
        super().__init__()
        # Full precision: stem.
        self.stem = nn.Sequential(fp_conv(in_channels, 64, 7, 2, 3), nn.BatchNorm2d(64),
                                  nn.MaxPool2d(3, 2, 1))
        stages, channels = [], 64
        for i, (width, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            blocks = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(channels, width, stride, binarizer, rho))
                channels = width * getattr(block, "expansion", 1)
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        # Full precision: head (ReLU → global average pool → FC).
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
        init_fp_layers_(self)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


@register_model("resnet18")
def resnet18(binarizer="sibnn", rho=RHO_DEFAULT, num_classes=1000, in_channels=3):
    return ResNet(BasicBlock, (2, 2, 2, 2), binarizer, rho, num_classes, in_channels)


@register_model("resnet50")
def resnet50(binarizer="sibnn", rho=RHO_DEFAULT, num_classes=1000, in_channels=3):
    return ResNet(Bottleneck, (3, 4, 6, 3), binarizer, rho, num_classes, in_channels)
