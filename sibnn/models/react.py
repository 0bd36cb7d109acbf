"""The ReAct unit (ReActNet, Liu et al., ECCV 2020) on the Bi-Real ResNet-18, and a small model of it for the digits.

ReActNet-18 as the authors' code lays it out [code: liuzechun/ReActNet ``resnet/2_step2/birealnet.py``,
``BasicBlock`` / ``BiRealNet`` / ``birealnet18``]: a stem conv7×7/2 → BN → maxpool (FP, no ReLU), then 16 units of
one 3×3 conv each (``[4, 4, 4, 4]`` blocks of 64, 128, 256, 512 channels), then global average pool → FC (FP, no
ReLU). One unit:

    RSign (learnable per-channel shift → sign) → binary conv3×3 → BN → + shortcut → RPReLU

with **no BatchNorm before the binary activation** (our Bi-Real unit, ``resnet.BinaryConvUnit``, is
BN → binarize → conv → BN). Here the "RSign" slot is the binary layer's own input binarizer, whichever the user
picks: ``create_model("resnet18_react", "sibnn")`` is Si-BNN activations in the ReAct unit (θ is their learnable
per-channel shift), ``"rsign"`` is ReActNet itself, ``"fp"`` the same network in full precision (ReLU in place of
the binarizer, real weights).
"""
from __future__ import annotations

import torch
from torch import nn

from sibnn.catalog import RHO_DEFAULT
from sibnn.layers import BinaryConv2d
from sibnn.models.common import fp_conv, init_fp_layers_
from sibnn.models.registry import register_model


class ChannelShift(nn.Module):
    """x + b, one learnable b per channel, initialised to 0 [code: ReActNet ``LearnableBias``: a (1, C, 1, 1)
    parameter of zeros, the shape kept so that their optimiser grouping (``p.ndimension() == 4``) reads it alike]."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class RPReLU(nn.Module):
    """ReActNet's RPReLU: shift → PReLU with a learnable per-channel slope → shift [code: ReActNet
    ``BasicBlock.move1 → prelu → move2``]: f(x) = PReLU_β(x − γ) + ζ, with γ (here −``shift_in``), ζ initialised
    to 0 and the slope β to PyTorch's ``nn.PReLU(channels)`` default 0.25."""

    def __init__(self, channels: int):
        super().__init__()
        self.shift_in = ChannelShift(channels)
        self.prelu = nn.PReLU(channels)
        self.shift_out = ChannelShift(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shift_out(self.prelu(self.shift_in(x)))


class ReActUnit(nn.Module):
    """binarize → binary conv → BN → + shortcut → RPReLU (one ReActNet-18 ``BasicBlock``). The binarizer sits inside
    the binary conv (``BinaryConv2d.act``); the shortcut is ``nn.Identity`` or ``react_downsample``."""

    def __init__(self, in_channels, out_channels, stride, binarizer, rho, shortcut: nn.Module):
        super().__init__()
        self.conv = BinaryConv2d(in_channels, out_channels, 3, stride, 1, binarizer, rho)
        self.bn = nn.BatchNorm2d(out_channels)
        self.shortcut = shortcut
        self.act = RPReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)) + self.shortcut(x))


def react_downsample(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """ReActNet's shape-changing shortcut, in their order: avgpool 2×2 (when striding) → FP conv1×1 → BN
    [code: ``BiRealNet._make_layer``]. Identity when the shape stays."""
    if in_channels == out_channels and stride == 1:
        return nn.Identity()
    layers: list[nn.Module] = []
    if stride != 1:
        # [choice] ceil_mode keeps the shortcut's size equal to the strided conv's on odd inputs (small test
        # images); at every even size (224 px: 56, 28, 14) it is their AvgPool2d(2, 2).
        layers.append(nn.AvgPool2d(stride, ceil_mode=True, count_include_pad=False))
    layers += [fp_conv(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels)]
    return nn.Sequential(*layers)


def react_stage(in_channels: int, width: int, depth: int, stride: int, binarizer, rho) -> nn.Sequential:
    units = [ReActUnit(in_channels, width, stride, binarizer, rho, react_downsample(in_channels, width, stride))]
    units += [ReActUnit(width, width, 1, binarizer, rho, nn.Identity()) for _ in range(depth - 1)]
    return nn.Sequential(*units)


class ReActResNet(nn.Module):
    """Bi-Real ResNet with ReAct units: FP stem conv7×7/2 → BN → maxpool, ``depths`` units per stage, FP head
    global avgpool → FC (their ``BiRealNet``: no ReLU anywhere outside the units' RPReLUs)."""

    def __init__(self, depths=(4, 4, 4, 4), binarizer="sibnn", rho=RHO_DEFAULT, num_classes=1000, in_channels=3):
        super().__init__()
        self.stem = nn.Sequential(fp_conv(in_channels, 64, 7, 2, 3), nn.BatchNorm2d(64), nn.MaxPool2d(3, 2, 1))
        stages, channels = [], 64
        for i, (width, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            stages.append(react_stage(channels, width, depth, 1 if i == 0 else 2, binarizer, rho))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
        init_fp_layers_(self)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


class DigitsReAct(nn.Module):
    """For the embedded 8×8 digits [choice]: FP conv3×3 → BN, then ReAct units (8×8 at ``width``, 4×4 at 2·width,
    two units per size), then global avgpool → FC (FP). The digits_cnn of the ReAct family: a ReActNet-vs-Si-BNN
    comparison that runs in seconds on two cores."""

    def __init__(self, binarizer="sibnn", rho=RHO_DEFAULT, num_classes=10, in_channels=1, width=32):
        super().__init__()
        self.stem = nn.Sequential(fp_conv(in_channels, width, 3, 1, 1), nn.BatchNorm2d(width))
        self.stages = nn.Sequential(react_stage(width, width, 2, 1, binarizer, rho),
                                    react_stage(width, 2 * width, 2, 2, binarizer, rho))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))
        init_fp_layers_(self)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


@register_model("resnet18_react")
def resnet18_react(binarizer="sibnn", rho=RHO_DEFAULT, num_classes=1000, in_channels=3):
    return ReActResNet((4, 4, 4, 4), binarizer, rho, num_classes, in_channels)


@register_model("digits_react")
def digits_react(binarizer="sibnn", rho=RHO_DEFAULT, num_classes=10, in_channels=1, width=32):
    return DigitsReAct(binarizer, rho, num_classes, in_channels, width)
