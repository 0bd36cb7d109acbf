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

from sibnn.catalog import INITS, LATENT_PROJECTION, RHO_DEFAULT, WEIGHT_GRADS
from sibnn.comparators import EDESchedule, xnornet_project_
from sibnn.quant import binarize_weight, make_activation


class BinaryLayer(nn.Module):
    """Marker base: ``act`` binarizes the input; ``weight`` is binarized in forward when ``binary_weight``."""

    act: nn.Module
    weight: nn.Parameter
    binary_weight: bool
    binarizer: str
    _weight_grad: str = "authors"

    @property
    def weight_grad(self) -> str:
        """The weight rule of ``binarize_weight`` (one of ``catalog.WEIGHT_GRADS``); ``set_weight_grad_`` sets it
        model-wide. IR-Net's rule needs the EDE schedule: setting it gives the layer a ``weight_ede``
        (``sibnn.comparators.EDESchedule``, whose ``set_epoch_progress`` the engine calls), any other rule removes it."""
        return self._weight_grad

    @weight_grad.setter
    def weight_grad(self, rule: str) -> None:
        if rule not in WEIGHT_GRADS:
            raise ValueError(f"unknown weight_grad {rule!r}; choose one of {', '.join(WEIGHT_GRADS)}")
        self._weight_grad = rule
        if rule == "irnet" and getattr(self, "weight_ede", None) is None:
            self.weight_ede = EDESchedule().to(self.weight.device)
        elif rule != "irnet" and "weight_ede" in self._modules:
            del self.weight_ede

    def quantized_weight(self) -> torch.Tensor:
        if not self.binary_weight:
            return self.weight
        return binarize_weight(self.weight, self.weight_grad, getattr(self, "weight_ede", None))


class BinaryConv2d(BinaryLayer):
    """binarize(x) → conv(·, α·sign(W)); no bias (a BatchNorm always follows)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 binarizer: str = "sibnn", rho: float = RHO_DEFAULT):
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

    def __init__(self, in_features: int, out_features: int, binarizer: str = "sibnn", rho: float = RHO_DEFAULT):
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
    """N(0, σ²) with σ = 1/fan_in (not 1/√fan_in), fan_in = elements of one output filter: the authors' script's
    init for every conv and FC weight (METHOD.md §4 [code: ``main_sibnn_learn.py``, ``normal_(0, 1.0/c)``])."""
    fan_in = w[0].numel()
    with torch.no_grad():
        return w.normal_(0.0, 1.0 / fan_in)


def init_weights_(model: nn.Module, init: str = "faithful") -> nn.Module:
    """Initialise every conv and linear weight of ``model`` (binary and full-precision layers) and its BatchNorms.

    ``"faithful"`` (default) [code]: weights ~ N(0, (1/fan_in)²), BatchNorm γ = 1, β = 0; biases (only the last
    FC has one) 0 [choice: the script leaves PyTorch's default uniform bias].
    ``"torch"`` [choice, ablation]: PyTorch's own default for conv/linear layers (kaiming-uniform with a = √5, i.e.
    U(±1/√fan_in); biases U(±1/√fan_in)), applied to the binary layers' latent weights too.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, BinaryLayer)):
            if init == "faithful":
                init_normal_fan_in_(m.weight)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, BinaryLayer):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))
            else:
                m.reset_parameters()
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()  # γ = 1, β = 0, running statistics reset
    return model


def set_weight_grad_(model: nn.Module, weight_grad: str) -> nn.Module:
    """Select the weight gradient rule of every binary layer (see ``binarize_weight``)."""
    if weight_grad not in WEIGHT_GRADS:
        raise ValueError(f"unknown weight_grad {weight_grad!r}; choose one of {', '.join(WEIGHT_GRADS)}")
    for _, m in binary_layers(model):
        m.weight_grad = weight_grad
    return model


def binary_layers(model: nn.Module) -> list[tuple[str, BinaryLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BinaryLayer)]


@torch.no_grad()
def clamp_latent_weights_(model: nn.Module) -> None:
    """Keep every binary layer's latent weights in [−1, 1] (METHOD.md §2); the engine calls this after each
    optimiser step — an in-place update between steps, like the optimiser's own, not a swap around forward.

    Per weight rule, as its authors' code does (``catalog.LATENT_PROJECTION``): "authors"/"ste" clamp; "xnornet"
    centres over input channels, then clamps (``sibnn.comparators.xnornet_project_``); "bireal" and "irnet" leave
    the latent weights as they are (neither Bi-Real's, ReActNet's nor IR-Net's scripts clamp them)."""
    for _, m in binary_layers(model):
        if not m.binary_weight:
            continue
        projection = LATENT_PROJECTION[m.weight_grad]
        if projection == "clamp":
            m.weight.clamp_(-1.0, 1.0)
        elif projection == "center_clamp":
            xnornet_project_(m.weight)
