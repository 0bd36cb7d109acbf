"""Training recipes by name (METHOD.md §4): the AAAI paper's and the TNNLS journal script's.

Both use Adam; both decay every parameter except θ and s (the binarizers' parameters, picked by module type).
Schedules are stepped once per iteration, so one engine loop serves both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from sibnn.quant import SiBinarize


@dataclass(frozen=True)
class Recipe:
    name: str
    lr: float
    weight_decay: float
    schedule: str                      # "step" (÷10 at fractions of the run) or "cosine" (per iteration)
    milestones: tuple[float, ...] = ()  # fractions of the total epochs, for "step"
    gamma: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = 100
    batch_size: int = 256


RECIPES = {
    # [paper, AAAI] Adam 1e-3, ÷10 at epochs 40 and 80 of 100, weight decay 1e-6. The steps are stored as fractions
    # of the run: at 100 epochs they are the paper's epochs 40 and 80; at other lengths the scaling is [choice]
    # (``lr_factor``; docs/fidelity.md row 10).
    "aaai": Recipe("aaai", lr=1e-3, weight_decay=1e-6, schedule="step", milestones=(0.4, 0.8)),
    # [code, journal] the same with cosine decay per iteration and weight decay 1e-5.
    "tnnls": Recipe("tnnls", lr=1e-3, weight_decay=1e-5, schedule="cosine"),
}


def get_recipe(name: str, **overrides) -> Recipe:
    try:
        recipe = RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}") from None
    return replace(recipe, **{k: v for k, v in overrides.items() if v is not None})


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups, as in the authors' script (``main_sibnn_learn.py``: thresholds vs everything else): the
    binarizers' θ and s (never decayed: [paper] "we set the weight decay of Δ and θ to zero"), and every other
    parameter — conv/FC weights, biases, BatchNorm γ and β — decayed by ``weight_decay``."""
    binarizer, decayed = [], []
    seen: set[int] = set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            (binarizer if isinstance(module, SiBinarize) else decayed).append(p)
    groups = [
        {"name": "decayed", "params": decayed, "weight_decay": weight_decay},
        {"name": "binarizer", "params": binarizer, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    # Adam's weight decay is the paper's L2 term (Adam "default settings"), not AdamW's decoupled decay.
    return torch.optim.Adam(param_groups(model, recipe.weight_decay), lr=recipe.lr, betas=recipe.betas)


def lr_factor(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the initial lr at iteration ``step`` (0-based) of a run of ``recipe.epochs`` epochs.

    "step": ``gamma`` once for every milestone m with epoch ≥ round(m · epochs), epoch = step // steps_per_epoch (so
    the lr changes only at epoch boundaries). At 100 epochs (0.4, 0.8) give epochs 40 and 80 (0-based), the paper's
    rule; elsewhere the nearest whole epoch, e.g. 10 → 4, 8; 8 → 3, 6; 2 → 1, 2 (the second never comes);
    1 → 0, 1 (a 1-epoch run is ÷10 from its first step). 0.4·E and 0.8·E never end in .5 for a whole E, so
    Python's half-to-even rounding never decides.
    """
    total = recipe.epochs * steps_per_epoch
    if recipe.schedule == "step":
        epoch = step // steps_per_epoch
        passed = sum(epoch >= round(m * recipe.epochs) for m in recipe.milestones)
        return recipe.gamma ** passed
    if recipe.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    raise ValueError(f"unknown schedule {recipe.schedule!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int):
    """A per-iteration LambdaLR; call ``scheduler.step()`` after every optimiser step."""
    if steps_per_epoch < 1:
        raise ValueError("steps_per_epoch must be ≥ 1")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(recipe, step, steps_per_epoch))
