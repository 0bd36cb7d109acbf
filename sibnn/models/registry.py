"""Model registry: ``create_model("resnet18", binarizer="sibnn", rho=0.3, num_classes=1000)`` (timm-style).

Every builder takes the same keyword arguments, so a sweep over architectures and binarizers is a sweep over
strings. The facts about each model (dataset, input size, channels, classes) live in ``sibnn.catalog`` (torch-free,
what the service and the spec read); registering a builder joins it to its facts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from sibnn import catalog
from sibnn.catalog import BINARIZER_NAMES, INITS, RHO_DEFAULT, WEIGHT_GRADS, check_rho
from sibnn.layers import init_weights_, set_weight_grad_


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., nn.Module]
    dataset: str          # the dataset family the architecture is laid out for
    input_size: int       # side of the square input the paper uses
    in_channels: int
    num_classes: int
    description: str
    flat_input: bool = False  # an MLP: built for a pixel count (``input_size`` keyword), not only channels

    def input_kwargs(self, input_shape: tuple) -> dict:
        """The builder's keyword arguments that fit it to an input of shape (C, H, W)."""
        kw = {"in_channels": input_shape[0]}
        if self.flat_input:
            kw["input_size"] = input_shape[1]
        return kw


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, **facts):
    """Register ``builder`` under ``name``; the facts (dataset, input_size, in_channels, num_classes, description,
    flat_input) default to ``sibnn.catalog.MODELS[name]`` and are required for a model the catalog does not know."""
    def wrap(builder):
        known = catalog.MODELS.get(name)
        base = {k: getattr(known, k) for k in ("dataset", "input_size", "in_channels", "num_classes",
                                               "description", "flat_input")} if known else {}
        _REGISTRY[name] = ModelInfo(name, builder, **{**base, **facts})
        return builder
    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_info(arch: str) -> ModelInfo:
    try:
        return _REGISTRY[arch]
    except KeyError:
        raise ValueError(f"unknown arch {arch!r}; available: {', '.join(list_models())}") from None


def create_model(arch: str, binarizer: str = "sibnn", rho: float = RHO_DEFAULT, num_classes: int | None = None,
                 *, weight_grad: str = "authors", init: str = "faithful", **kwargs) -> nn.Module:
    """Build ``arch``. ``weight_grad`` ("authors" | "ste") picks the binary layers' weight gradient rule
    (``sibnn.quant.binarize_weight``); ``init`` ("faithful" | "torch") the initialisation
    (``sibnn.layers.init_weights_``). The defaults are the authors' rules (METHOD.md §2, §4)."""
    info = model_info(arch)
    if weight_grad not in WEIGHT_GRADS:
        raise ValueError(f"unknown weight_grad {weight_grad!r}; choose one of {', '.join(WEIGHT_GRADS)}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if binarizer not in BINARIZER_NAMES:
        raise ValueError(f"unknown binarizer {binarizer!r}; choose one of {', '.join(BINARIZER_NAMES)}")
    check_rho(rho)
    model = info.builder(binarizer=binarizer, rho=rho,
                         num_classes=info.num_classes if num_classes is None else num_classes, **kwargs)
    if init != "faithful":  # builders already apply the faithful init
        init_weights_(model, init)
    return set_weight_grad_(model, weight_grad)
