"""Training recipes by name (METHOD.md §4): the AAAI paper's and the TNNLS journal script's, and ReActNet's two steps.

All use Adam. The Si-BNN recipes decay every parameter except θ and s (the binarizers' parameters, picked by module
type); ReActNet's decay only the conv kernels and the learnable shifts (``decay_groups``). Schedules are stepped once per iteration, so one
engine loop serves all of them (an epoch-wise schedule is a per-iteration one that changes at epoch boundaries).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from sibnn.comparators import RSign
from sibnn.quant import SiBinarize


@dataclass(frozen=True)
class Recipe:
    name: str
    lr: float
    weight_decay: float
    schedule: str                      # "step" (÷10 at fractions of the run), "cosine" (per iteration), "linear"
    #                                    (to 0, per epoch, as ReActNet) or "linear_iter" (to 0, per iteration)
    milestones: tuple[float, ...] = ()  # fractions of the total epochs, for "step"
    gamma: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = 100
    batch_size: int = 256
    decay_groups: str = "except_thresholds"  # which parameters weight decay applies to: see ``param_groups``


RECIPES = {
    # [paper, AAAI] Adam 1e-3, ÷10 at epochs 40 and 80 of 100, weight decay 1e-6. The steps are stored as fractions
    # of the run: at 100 epochs they are the paper's epochs 40 and 80; at other lengths the scaling is [choice]
    # (``lr_factor``; docs/fidelity.md row 10).
    "aaai": Recipe("aaai", lr=1e-3, weight_decay=1e-6, schedule="step", milestones=(0.4, 0.8)),
    # [code, journal] the same with cosine decay per iteration and weight decay 1e-5.
    "tnnls": Recipe("tnnls", lr=1e-3, weight_decay=1e-5, schedule="cosine"),
    # [code] ReActNet (github liuzechun/ReActNet), the ResNet-18 scripts' active 128-epoch lines,
    # resnet/1_step1/run.sh and resnet/2_step2/run.sh: ``--batch_size=512 --learning_rate=2.5e-3 --epochs=128
    # --weight_decay=1e-5`` (step 1: binary activations, real weights) and ``--weight_decay=0`` (step 2: binary
    # weights too, initialised from step 1). train.py: ``torch.optim.Adam(..., lr=args.learning_rate)`` (default
    # betas; ``--momentum`` is parsed, unused), weight decay only on ``p.ndimension() == 4 or 'conv' in pname``
    # (the conv kernels and the (1, C, 1, 1) ``LearnableBias`` shifts), ``LambdaLR(optimizer, lambda step: 1.0 -
    # step/args.epochs)`` stepped once per epoch.
    # Their 256-epoch alternative (commented out in run.sh) is lr 1e-3: ``get_recipe("react1", epochs=256, lr=1e-3)``.
    "react1": Recipe("react1", lr=2.5e-3, weight_decay=1e-5, schedule="linear", epochs=128, batch_size=512,
                     decay_groups="conv_and_shifts"),
    "react2": Recipe("react2", lr=2.5e-3, weight_decay=0.0, schedule="linear", epochs=128, batch_size=512,
                     decay_groups="conv_and_shifts"),
}

SCHEDULES = ("step", "cosine", "linear", "linear_iter")
DECAY_GROUPS = ("except_thresholds", "conv_and_shifts")


def get_recipe(name: str, **overrides) -> Recipe:
    try:
        recipe = RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}") from None
    return replace(recipe, **{k: v for k, v in overrides.items() if v is not None})


def _reactnet_decays(module: nn.Module, p: torch.Tensor) -> bool:
    # ReActNet's ``p.ndimension() == 4`` read on what it picks in their models: the conv kernels (FP and binary) and
    # the ``LearnableBias`` shifts, (1, C, 1, 1) there. Ours keep that shape in ``ChannelShift`` (RPReLU's shifts),
    # so 4-D finds them; RSign's shift (their ``move0``) is (C,) here, so it is picked by type.
    return p.dim() == 4 or isinstance(module, RSign)


def param_groups(model: nn.Module, weight_decay: float, decay_groups: str = "except_thresholds") -> list[dict]:
    """The optimiser's parameter groups; the binarizers' θ and s are always a group of their own, never decayed.

    ``"except_thresholds"`` (the Si-BNN recipes): two groups, as in the authors' script (``main_sibnn_learn.py``:
    thresholds vs everything else): θ and s ([paper] "we set the weight decay of Δ and θ to zero"), and every other
    parameter — conv/FC weights, biases, BatchNorm γ and β — decayed by ``weight_decay``.
    ``"conv_and_shifts"`` (ReActNet's recipes, [code] ``resnet/*/train.py``: decay on ``p.ndimension() == 4 or
    'conv' in pname``, Adam's default 0 elsewhere): the conv kernels (stem, binary, downsample) and the learnable
    shifts (RPReLU's two, RSign's) decay; the FC's weight and bias, binary linear weights, BatchNorm γ/β, PReLU
    slopes get 0 (group ``undecayed``), and so do θ and s [choice: ReActNet has none].
    """
    if decay_groups not in DECAY_GROUPS:
        raise ValueError(f"unknown decay_groups {decay_groups!r}; choose one of {', '.join(DECAY_GROUPS)}")
    binarizer, decayed, undecayed = [], [], []
    seen: set[int] = set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            if isinstance(module, SiBinarize):
                binarizer.append(p)
            elif decay_groups == "except_thresholds" or _reactnet_decays(module, p):
                decayed.append(p)
            else:
                undecayed.append(p)
    groups = [
        {"name": "decayed", "params": decayed, "weight_decay": weight_decay},
        {"name": "binarizer", "params": binarizer, "weight_decay": 0.0},
        {"name": "undecayed", "params": undecayed, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    # Adam's weight decay is the paper's L2 term (Adam "default settings"), not AdamW's decoupled decay; ReActNet's
    # script uses torch.optim.Adam's L2 term too.
    return torch.optim.Adam(param_groups(model, recipe.weight_decay, recipe.decay_groups), lr=recipe.lr,
                            betas=recipe.betas)


def lr_factor(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the initial lr at iteration ``step`` (0-based) of a run of ``recipe.epochs`` epochs.

    "step": ``gamma`` once for every milestone m with epoch ≥ round(m · epochs), epoch = step // steps_per_epoch (so
    the lr changes only at epoch boundaries). At 100 epochs (0.4, 0.8) give epochs 40 and 80 (0-based), the paper's
    rule; elsewhere the nearest whole epoch, e.g. 10 → 4, 8; 8 → 3, 6; 2 → 1, 2 (the second never comes);
    1 → 0, 1 (a 1-epoch run is ÷10 from its first step). 0.4·E and 0.8·E never end in .5 for a whole E, so
    Python's half-to-even rounding never decides.

    "linear" (ReActNet, [code] ``train.py``): ``LambdaLR(lambda step: 1.0 - step/epochs)`` stepped once per epoch
    *before* the epoch's first iteration (``scheduler.step()`` at the top of ``train()``), so epoch e (0-based)
    trains at 1 − (e + 1)/E: the first epoch already at 1 − 1/E, the last at 0 (it only moves BatchNorm's running
    statistics). Reproduced as it is.
    "linear_iter" [choice]: the same line per iteration, 1 − step/(E · steps_per_epoch), from 1 at the first step.
    """
    total = recipe.epochs * steps_per_epoch
    if recipe.schedule == "step":
        epoch = step // steps_per_epoch
        passed = sum(epoch >= round(m * recipe.epochs) for m in recipe.milestones)
        return recipe.gamma ** passed
    if recipe.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    if recipe.schedule == "linear":
        return max(0.0, 1.0 - (step // steps_per_epoch + 1) / recipe.epochs)
    if recipe.schedule == "linear_iter":
        return max(0.0, 1.0 - step / total)
    raise ValueError(f"unknown schedule {recipe.schedule!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int):
    """A per-iteration LambdaLR; call ``scheduler.step()`` after every optimiser step."""
    if steps_per_epoch < 1:
        raise ValueError("steps_per_epoch must be ≥ 1")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(recipe, step, steps_per_epoch))
