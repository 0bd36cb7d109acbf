"""Building blocks shared by the architectures."""
from __future__ import annotations

from torch import nn

from sibnn.layers import init_normal_fan_in_


def fp_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    """A full-precision convolution (first conv, ResNet downsample 1×1): real weights, real inputs, no bias."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)


def init_fp_layers_(model: nn.Module) -> nn.Module:
    """N(0, 1/fan_in) for the full-precision convs and FCs too (METHOD.md §4); binary layers init themselves."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            init_normal_fan_in_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model
