"""A plain PyTorch train/eval engine: one process, CPU or one GPU, AMP (bf16) and channels_last options.

The Ray jobs wrap exactly these functions: they hand in sharded loaders, a DDP-wrapped model and a ``reduce``
that sums a tensor over ranks; nothing here knows about Ray or MLflow.
"""
from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sibnn.layers import clamp_latent_weights_
from sibnn.metrics import SparsityMeter, binarizer_stats, topk_correct
from sibnn.recipe import Recipe, build_optimizer, build_scheduler

Reduce = Callable[[torch.Tensor], torch.Tensor]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but this machine has no CUDA GPU")
    return dev


def _autocast(device: torch.device, amp: bool):
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _prepare(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def distribution_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """ReActNet's distributional loss ([code] ``utils/KD_loss.py`` ``DistributionLoss``): the cross-entropy of the
    student's log-softmax against the teacher's softmax, mean over the batch, temperature 1:
    −(1/N) Σ_n Σ_c p_t(n, c) · log p_s(n, c).

    It is cross-entropy with soft targets, not KL: KL(p_t ‖ p_s) = this − H(p_t), and the teacher's entropy H(p_t)
    does not depend on the student, so both have the same gradient; the value differs by that constant."""
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # bf16 logits (autocast) in float32
    log_p_student = F.log_softmax(student_logits.to(dtype), dim=1)
    p_teacher = F.softmax(teacher_logits.detach().to(dtype), dim=1)
    return -(p_teacher * log_p_student).sum(dim=1).mean()


@dataclass(frozen=True)
class Distill:
    """How a teacher's outputs enter the training loss: distribution loss + ``ce_weight`` · hard-label CE
    (ReActNet: ``ce_weight = 0``, the distribution loss alone)."""
    ce_weight: float = 0.0


def _freeze_teacher(teacher: nn.Module) -> nn.Module:
    # eval: BatchNorm uses, and never updates, its running statistics; no parameter takes a gradient.
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, scheduler=None, *,
                    device: torch.device, amp: bool = False, channels_last: bool = False,
                    reduce: Reduce | None = None, max_steps: int | None = None, label_smoothing: float = 0.0,
                    teacher: nn.Module | None = None, distill: Distill | None = None) -> dict[str, float]:
    """One pass over ``loader``: the training loss, Adam step, scheduler step per iteration, clamp of the latent
    binary weights to [−1, 1] after every step (METHOD.md §2). Returns loss, top-1 and images/s of this rank's
    share (summed over ranks when ``reduce`` is given).

    The loss: cross-entropy with ``label_smoothing`` (0 = the paper's plain CE) without a teacher; with a
    ``teacher`` (a model on ``device``, kept in eval mode with no gradients, never in the optimiser),
    ``distribution_loss(student, teacher) + distill.ce_weight · CE(student, labels; label_smoothing)``."""
    model.train()
    if teacher is not None:
        _freeze_teacher(teacher)
        distill = distill or Distill()
    sums = torch.zeros(4, dtype=torch.float64)  # loss·n, correct@1, n, steps
    start = time.perf_counter()
    for step, (x, y) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        x, y = _prepare(x, y, device, channels_last)
        with _autocast(device, amp):
            logits = model(x)
            if teacher is None:
                loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
            else:
                with torch.no_grad():
                    teacher_logits = teacher(x)
                loss = distribution_loss(logits, teacher_logits)
                if distill.ce_weight:
                    loss = loss + distill.ce_weight * F.cross_entropy(logits.float(), y,
                                                                      label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clamp_latent_weights_(model)
        if scheduler is not None:
            scheduler.step()
        n = y.shape[0]
        sums += torch.tensor([float(loss.detach()) * n, topk_correct(logits.detach(), y, (1,))[0], n, 1],
                             dtype=torch.float64)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if reduce is not None:
        sums = reduce(sums)
    n = max(sums[2].item(), 1.0)
    return {"train_loss": sums[0].item() / n, "train_top1": 100.0 * sums[1].item() / n,
            "images_per_s": sums[2].item() / seconds, "train_seconds": seconds, "train_samples": int(sums[2])}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device, amp: bool = False,
             channels_last: bool = False, reduce: Reduce | None = None) -> dict:
    """Loss, top-1, top-5 (%) and per-layer sparsity over a whole evaluation pass in eval mode.

    With ``reduce`` the sums (and the sparsity counts) are totalled over ranks, so every rank returns the metrics
    of the full validation set; the loaders must not count a sample twice (unpadded shards)."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # loss·n, correct@1, correct@5, n
    with SparsityMeter(unwrap(model)) as meter:  # layer names without DDP's "module." prefix
        for x, y in loader:
            x, y = _prepare(x, y, device, channels_last)
            with _autocast(device, amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
            c1, c5 = topk_correct(logits, y, (1, 5))
            sums += torch.tensor([float(loss), c1, c5, y.shape[0]], dtype=torch.float64)
    counts = meter.counts()
    if reduce is not None:
        sums = reduce(sums)
        if counts.numel():
            counts = reduce(counts)
            meter.load_counts(counts)
    n = max(sums[3].item(), 1.0)
    out = {"val_loss": sums[0].item() / n, "val_top1": 100.0 * sums[1].item() / n,
           "val_top5": 100.0 * sums[2].item() / n, "val_samples": int(sums[3]),
           "sparsity_mean": meter.mean(), "sparsity": meter.per_layer()}
    return out


@dataclass
class TrainState:
    """What a checkpoint holds besides the weights: where the run is and how to continue it bit for bit."""
    epoch: int = 0                     # epochs completed
    best_top1: float = float("-inf")
    history: list = field(default_factory=list)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / torch.compile wrappers, whose state_dict keys match a plain model's."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def checkpoint_dict(model, optimizer, scheduler, state: TrainState, config: dict | None = None) -> dict:
    return {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "state": {"epoch": state.epoch, "best_top1": state.best_top1, "history": state.history},
            "rng": rng_state(), "config": config or {}}


def restore_checkpoint(ckpt: dict, model, optimizer=None, scheduler=None) -> TrainState:
    unwrap(model).load_state_dict(ckpt["model"])
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if "rng" in ckpt:
        set_rng_state(ckpt["rng"])
    s = ckpt["state"]
    return TrainState(epoch=s["epoch"], best_top1=s["best_top1"], history=list(s["history"]))


EpochCallback = Callable[[int, dict, TrainState], None]


def set_epoch_progress(model: nn.Module, epoch: int, epochs: int) -> None:
    """Tell every module of ``model`` (unwrapped) that has a ``set_epoch_progress(epoch, epochs)`` method where the
    run is: ``epoch`` 0-based of ``epochs`` (e.g. IR-Net's EDE schedule, whose gradient sharpens over training)."""
    for module in unwrap(model).modules():
        hook = getattr(module, "set_epoch_progress", None)
        if callable(hook):
            hook(epoch, epochs)


def fit(model: nn.Module, train_loader, val_loader, recipe: Recipe, *, device: torch.device, amp: bool = False,
        channels_last: bool = False, reduce: Reduce | None = None, state: TrainState | None = None,
        optimizer=None, scheduler=None, on_epoch: EpochCallback | None = None, label_smoothing: float = 0.0,
        teacher: nn.Module | None = None, distill: Distill | None = None) -> TrainState:
    """Train for ``recipe.epochs`` epochs (continuing from ``state.epoch``), evaluating after each one.

    ``on_epoch(epoch, metrics, state)`` is called after every epoch: the Ray job reports metrics and checkpoints
    there, the command line prints. Pass ``optimizer``/``scheduler``/``state`` restored from a checkpoint to resume.
    Before each epoch, ``set_epoch_progress(model, epoch, recipe.epochs)``. ``label_smoothing``, ``teacher``,
    ``distill``: the training loss (``train_one_epoch``); evaluation is always plain cross-entropy.
    """
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = optimizer or build_optimizer(model, recipe)
    scheduler = scheduler or build_scheduler(optimizer, recipe, len(train_loader))
    state = state or TrainState()
    for epoch in range(state.epoch, recipe.epochs):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        set_epoch_progress(model, epoch, recipe.epochs)
        lr = optimizer.param_groups[0]["lr"]
        metrics = train_one_epoch(model, train_loader, optimizer, scheduler, device=device, amp=amp,
                                  channels_last=channels_last, reduce=reduce, label_smoothing=label_smoothing,
                                  teacher=teacher, distill=distill)
        metrics.update(evaluate(model, val_loader, device=device, amp=amp, channels_last=channels_last,
                                reduce=reduce))
        metrics.update(binarizer_stats(unwrap(model)))
        metrics["lr"] = lr
        metrics["epoch"] = epoch + 1
        state.epoch = epoch + 1
        state.best_top1 = max(state.best_top1, metrics["val_top1"])
        state.history.append(dict(metrics))
        if on_epoch is not None:
            on_epoch(epoch + 1, metrics, state)
    return state
