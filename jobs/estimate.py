"""GPU-hours a spec's trials will take, estimated before anything runs: what ``POST /experiments`` answers and
``sibnn submit`` prints, so a user sees the cost of a preset before spending days of GPU time on it.

[choice] One measured anchor, scaled by each model's multiply-accumulates: ``bench/train_step.py`` on one NVIDIA
H100 (ResNet-18 at 224 px, batch 256, bf16, channels-last, ``torch.compile``; docs/benchmarks.md, 2026-11-26) trained
10,425 images/s with Si-BNN activations and 11,835 full precision. A model with k times ResNet-18's MACs is taken to
train at 1/k of that, capped by the DALI pipeline's measured 13,906 images/s (same page), and an evaluation image to
cost a third of a training one (a forward pass without the backward); a trial that distils also runs its teacher's
forward pass on every training image, at that third of the teacher's own cost. A dataset read from a root is taken at its
published size (ImageNet-1k 1,281,167 train / 50,000 val; MNIST 60,000 / 10,000; CIFAR-10 50,000 / 10,000); the
embedded and synthetic ones at the sizes they and the spec fix. GPU-hours are per trial and add over a trial's workers at
ideal scaling, so 4 GPUs finish a 4-GPU-hour trial in about an hour. It is an estimate of the order of the cost, not
a promise: other GPUs, eager mode and slower storage take longer (the anchor's numbers say by how much for eager).

Plain data: reads ``sibnn.catalog`` (the per-layer MACs in catalog.json), imports no torch.
"""
from __future__ import annotations

from dataclasses import dataclass

from sibnn import catalog

ANCHOR_DEVICE = "one NVIDIA H100 80GB (bf16, torch.compile)"
ANCHOR_ARCH = "resnet18"
# images/s of a training step at the anchor (docs/benchmarks.md, "Training step"): full precision vs binary layers
ANCHOR_IMAGES_PER_S = {"fp": 11_835.0, "binary": 10_425.0}
LOADER_IMAGES_PER_S = 13_906.0   # DALI GPU pipeline, rrc, 65,536 images (docs/benchmarks.md, "DALI GPU pipeline")
EVAL_COST = 1.0 / 3.0            # an evaluation image: a forward pass, about a third of a training step
# the published splits of the datasets a root holds (train, val/test images): what a full copy has
PUBLISHED_SIZES = {"imagenet": (1_281_167, 50_000), "mnist": (60_000, 10_000), "cifar10": (50_000, 10_000)}


@dataclass(frozen=True)
class TrialEstimate:
    trial_id: str
    epochs: int
    images_per_s: float   # the estimated training throughput on one anchor GPU
    gpu_hours: float


def macs(arch: str, binarizer: str, image_size: int | None = None) -> float:
    """Multiply-accumulates of one forward pass at the model's paper input size, scaled by area to ``image_size``."""
    summary = catalog.summary(arch, binarizer)
    totals = summary["totals"]
    side = summary["input_shape"][-1]
    area = 1.0 if image_size is None else (image_size / side) ** 2
    return float(totals["binary_macs"] + totals["fp_macs"]) * area


def dataset_sizes(spec) -> tuple[int, int]:
    """(train, val) images the spec's trials go through each epoch."""
    ds = spec.dataset
    info = catalog.dataset_info(ds.kind)
    if ds.kind in PUBLISHED_SIZES:
        return PUBLISHED_SIZES[ds.kind]
    if ds.kind == "synthetic":
        return ds.synthetic_classes * ds.synthetic_per_class, ds.synthetic_classes * max(1, ds.synthetic_per_class // 5)
    train = ds.train_size or info.train_size
    if train is None or info.test_size is None:
        raise ValueError(f"no fixed size known for dataset {ds.kind!r}")
    return train, info.test_size


def model_images_per_s(arch: str, binarizer: str, image_size: int | None = None) -> float:
    """Training images/s of the model alone on one anchor GPU (no loader cap)."""
    kind = "fp" if binarizer == "fp" else "binary"
    return ANCHOR_IMAGES_PER_S[kind] * macs(ANCHOR_ARCH, binarizer if kind == "binary" else "fp") / macs(
        arch, binarizer, image_size)


def images_per_s(arch: str, binarizer: str, image_size: int | None = None,
                 teacher: tuple[str, str] | None = None) -> float:
    """Training images/s on one anchor GPU: the model's, plus the forward pass of a distillation ``teacher``
    ((arch, binarizer): a third of its own training cost per image), capped by the loader."""
    seconds = 1.0 / model_images_per_s(arch, binarizer, image_size)
    if teacher is not None:
        seconds += EVAL_COST / model_images_per_s(*teacher, image_size)
    return min(1.0 / seconds, LOADER_IMAGES_PER_S)


def _epochs(spec, trial) -> int:
    recipe = getattr(trial, "recipe", None) or spec.recipe  # a trial with its own recipe (a stage, a teacher)
    return recipe.epochs


def estimate(spec) -> list[TrialEstimate]:
    """One estimate per trial of ``spec`` (an ``ExperimentSpec``), in ``spec.trials()`` order."""
    n_train, n_val = dataset_sizes(spec)
    size = spec.dataset.image_size
    out = []
    teacher = getattr(spec, "teacher", None)
    for trial in spec.trials():
        # a teacher trained before (model_uri) has no arch here: its forward pass is not counted
        distils = teacher is not None and teacher.arch is not None and "teacher" in getattr(trial, "needs", {})
        rate = images_per_s(trial.arch, trial.binarizer, size, (teacher.arch, teacher.binarizer) if distils else None)
        epochs = _epochs(spec, trial)
        seconds = epochs * (n_train + EVAL_COST * n_val) / rate
        out.append(TrialEstimate(trial.trial_id, epochs, rate, seconds / 3600.0))
    return out


def summary(spec) -> dict:
    """What the API answers: GPU-hours per trial (the largest, since trials differ), in total, and the assumption."""
    trials = estimate(spec)
    return {"per_trial_max": max(t.gpu_hours for t in trials), "total": sum(t.gpu_hours for t in trials),
            "trials": {t.trial_id: t.gpu_hours for t in trials},
            "assumes": f"{ANCHOR_DEVICE}, scaled by each model's MACs from a measured ResNet-18 "
                       f"(docs/benchmarks.md); ideal scaling over a trial's GPUs"}
