"""ResNet in torchvision's layout: the full-precision ResNet-34 that ReActNet distils from, and a small one for the
digits.

[code: liuzechun/ReActNet ``resnet/1_step1/train.py``: ``models.__dict__[args.teacher](pretrained=True)`` with
``--teacher resnet34``, i.e. torchvision's ``resnet34``] — its weights cannot be downloaded here, so the teacher is
trained in the same experiment. The layout is torchvision's ``ResNet(BasicBlock, [3, 4, 6, 3])``: stem conv7×7/2 →
BN → ReLU → maxpool 3×3/2; blocks conv3×3 → BN → ReLU → conv3×3 → BN → + shortcut → ReLU, the shortcut an identity
or conv1×1 with the block's stride → BN; global avgpool → FC with bias. Module names follow torchvision's, so its
``state_dict`` loads into the ``"fp"`` model as it is.

Each 3×3 conv is a ``BinaryConv2d`` whose input activation is the binarizer: ReLU with ``binarizer="fp"``, which
is exactly torchvision's ReLU after ``bn1`` (for the first conv of a block it re-applies the ReLU that ended the
previous block, a no-op). With a binary binarizer [choice] the same layout binarizes every 3×3 conv and drops the
stem's and the blocks' closing ReLUs (the next layer's binarizer is the nonlinearity; a ReLU in front of it would
turn sign-BNN's ±1 codes into a constant +1): a plain binarized ResNet-34, not Bi-Real.
"""
from __future__ import annotations

from torch import nn

from sibnn.catalog import RHO_DEFAULT
from sibnn.layers import BinaryConv2d
from sibnn.models.common import fp_conv, init_fp_layers_
from sibnn.models.registry import register_model


def _relu(binarizer: str) -> nn.Module:
    return nn.ReLU() if binarizer == "fp" else nn.Identity()


class StandardBlock(nn.Module):
    """torchvision ``BasicBlock``: conv1 → bn1 → (ReLU: conv2's activation) → conv2 → bn2 → + shortcut → ReLU."""

    def __init__(self, in_channels, out_channels, stride, binarizer, rho):
        super().__init__()
        self.conv1 = BinaryConv2d(in_channels, out_channels, 3, stride, 1, binarizer, rho)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = BinaryConv2d(out_channels, out_channels, 3, 1, 1, binarizer, rho)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(fp_conv(in_channels, out_channels, 1, stride),
                                            nn.BatchNorm2d(out_channels))
        self.relu = _relu(binarizer)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))) + identity)


class StandardResNet(nn.Module):
    """``small_stem``: conv3×3/1 → BN → ReLU and no max-pool (8×8 inputs) instead of conv7×7/2 → BN → ReLU → pool."""

    def __init__(self, depths, widths=(64, 128, 256, 512), binarizer="fp", rho=RHO_DEFAULT, num_classes=1000,
                 in_channels=3, small_stem=False):
        super().__init__()
        w0 = widths[0]
        self.conv1 = fp_conv(in_channels, w0, 3, 1, 1) if small_stem else fp_conv(in_channels, w0, 7, 2, 3)
        self.bn1 = nn.BatchNorm2d(w0)
        self.relu = _relu(binarizer)
        self.maxpool = nn.Identity() if small_stem else nn.MaxPool2d(3, 2, 1)
        channels = w0
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = []
            for j in range(depth):
                blocks.append(StandardBlock(channels, width, 2 if (i > 0 and j == 0) else 1, binarizer, rho))
                channels = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(depths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_fp_layers_(self)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.avgpool(x).flatten(1))


@register_model("resnet34")
def resnet34(binarizer="fp", rho=RHO_DEFAULT, num_classes=1000, in_channels=3):
    return StandardResNet((3, 4, 6, 3), (64, 128, 256, 512), binarizer, rho, num_classes, in_channels)


@register_model("digits_resnet")
def digits_resnet(binarizer="fp", rho=RHO_DEFAULT, num_classes=10, in_channels=1, width=32):
    return StandardResNet((1, 1), (width, 2 * width), binarizer, rho, num_classes, in_channels, small_stem=True)
