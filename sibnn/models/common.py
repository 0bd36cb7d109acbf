"""Building blocks shared by the architectures."""
from __future__ import annotations

from torch import nn

from sibnn.layers import init_weights_


def fp_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    """A full-precision convolution (first conv, ResNet downsample 1×1): real weights, real inputs, no bias."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)


def init_fp_layers_(model: nn.Module) -> nn.Module:
    """The faithful init (METHOD.md §4, ``sibnn.layers.init_weights_``) for every layer of a freshly built model;
    ``create_model(init=...)`` re-initialises afterwards for an ablation."""
    return init_weights_(model, "faithful")
