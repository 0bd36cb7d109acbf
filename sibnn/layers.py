"""Binary layers: a conv or linear layer that binarizes its own input activations and its weights.

A binary layer owns its input binarizer (``self.act``), so "binary in weights and its input activations"
(METHOD.md §2) is one module: metrics hook ``act`` for sparsity, the summary counts its weights as 1-bit, and the
packed-inference exporter finds the threshold next to the weights it feeds. With ``binarizer="fp"`` the same layer
is the full-precision baseline: ReLU in place of the binarizer and real-valued weights.

Layers that stay full precision in every model (first conv, last FC, ResNet downsample 1×1) are plain
``nn.Conv2d`` / ``nn.Linear``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sibnn.quant import binarize_weight, make_activation


class BinaryLayer(nn.Module):
    """Marker base: ``act`` binarizes the input; ``weight`` is binarized in forward when ``binary_weight``."""

    act: nn.Module
    weight: nn.Parameter
    binary_weight: bool
    binarizer: str

    def quantized_weight(self) -> torch.Tensor:
        return binarize_weight(self.weight) if self.binary_weight else self.weight


class BinaryConv2d(BinaryLayer):
    """binarize(x) → conv(·, α·sign(W)); no bias (a BatchNorm always follows)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 binarizer: str = "sibnn", rho: float = 0.3):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.binarizer = binarizer
        self.binary_weight = binarizer != "fp"
        self.act = make_activation(binarizer, in_channels, rho)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        init_normal_fan_in_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.act(x), self.quantized_weight(), None, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, binarizer={self.binarizer!r}")


class BinaryLinear(BinaryLayer):
    """binarize(x) → linear(·, α·sign(W)); no bias (a BatchNorm always follows)."""

    def __init__(self, in_features: int, out_features: int, binarizer: str = "sibnn", rho: float = 0.3):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.binarizer = binarizer
        self.binary_weight = binarizer != "fp"
        self.act = make_activation(binarizer, in_features, rho)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        init_normal_fan_in_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.act(x), self.quantized_weight())

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, binarizer={self.binarizer!r}"


def init_normal_fan_in_(w: torch.Tensor) -> torch.Tensor:
    """N(0, 1/fan_in), the authors' script's init for conv and FC weights (METHOD.md §4)."""
    fan_in = w[0].numel()
    with torch.no_grad():
        return w.normal_(0.0, 1.0 / math.sqrt(fan_in))


def binary_layers(model: nn.Module) -> list[tuple[str, BinaryLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BinaryLayer)]


@torch.no_grad()
def clamp_latent_weights_(model: nn.Module) -> None:
    """Keep every binary layer's latent weights in [−1, 1] (METHOD.md §2); the engine calls this after each
    optimiser step — an in-place update between steps, like the optimiser's own, not a swap around forward."""
    for _, m in binary_layers(model):
        if m.binary_weight:
            m.weight.clamp_(-1.0, 1.0)
