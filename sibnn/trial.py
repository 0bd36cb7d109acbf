"""One trial: a typed ``TrialConfig`` and the one way to build, train and checkpoint it.

    cfg = TrialConfig(dataset="digits", binarizer="sibnn", rho=0.3, epochs=30, batch_size=64)
    trial = build_trial(cfg, device=torch.device("cpu"))
    state = trial.fit()
    torch.save(trial.checkpoint(state), "m.pt")
    model = model_from_checkpoint(torch.load("m.pt", weights_only=False))

The command line (``sibnn.train``), the Ray worker loop (``jobs.train_loop``, one ``build_trial`` per rank), the
end-of-trial export (``jobs.sweep``) and ``sibnn.infer`` all go through here, so a training rule or default exists
once. The facts it reads (datasets, models, binarizers) are ``sibnn.catalog``'s.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from sibnn import catalog
from sibnn.catalog import RHO_DEFAULT
from sibnn.data import DatasetError, load_small_dataset, small_loaders
from sibnn.engine import Distill, TrainState, checkpoint_dict, fit, restore_checkpoint, seed_everything
from sibnn.layers import binary_layers
from sibnn.models import create_model, model_info
from sibnn.recipe import Recipe, build_optimizer, build_scheduler, get_recipe


@dataclass(frozen=True)
class TrialConfig:
    """Everything that defines one training run. ``None`` overrides mean the recipe's (or the dataset's) value."""

    dataset: str = "digits"                      # a sibnn.catalog dataset
    arch: str | None = None                      # None: the dataset's usual model
    binarizer: str = "sibnn"
    rho: float = RHO_DEFAULT                     # used only by the binarizers that take it (catalog.takes_rho)
    # the recipe (sibnn.recipe) and its overrides
    recipe: str = "aaai"
    epochs: int | None = None
    batch_size: int | None = None                # global: split over the workers of a distributed trial
    lr: float | None = None
    weight_decay: float | None = None
    milestones: tuple[float, ...] | None = None
    # weight rules: the authors' by default (METHOD.md §2, §4)
    weight_grad: str = "authors"
    init: str = "faithful"
    seed: int = 0
    # the training loss and two-step training (ReActNet's recipe; off by default: the paper's plain CE, from scratch)
    label_smoothing: float = 0.0                 # in the training CE only; evaluation is plain CE
    teacher: str | None = None                   # a sibnn checkpoint file: distil from its model (distribution loss)
    ce_weight: float = 0.0                       # with a teacher: weight of the hard-label CE added to that loss
    init_from: str | None = None                 # a sibnn checkpoint file whose model weights start this model
    weights: str = "binary"                      # "binary" | "real": real-valued weights (step 1 of two-step)
    # data
    data_root: str | None = None
    data_format: str = "folder"                  # ImageNet-format data: JPEG folders or webdataset shards
    policy: str = "paper"                        # ImageNet augmentation
    image_size: int | None = None                # ImageNet crop; None: the arch's (224, 227)
    train_size: int | None = None                # small datasets: a fixed stratified train subset; None: all of it
    # runtime: how, not what, it computes
    amp: bool = False                            # bf16 autocast
    channels_last: bool = False
    compile: bool = False                        # torch.compile the model

    def __post_init__(self):
        catalog.dataset_info(self.dataset)
        catalog.binarizer_info(self.binarizer)
        for name, value, choices in (("weight_grad", self.weight_grad, catalog.WEIGHT_GRADS),
                                     ("init", self.init, catalog.INITS),
                                     ("data_format", self.data_format, catalog.DATA_FORMATS),
                                     ("policy", self.policy, catalog.POLICIES)):
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
        catalog.check_rho(self.rho)
        if self.weights not in WEIGHTS:
            raise ValueError(f"unknown weights {self.weights!r}; choose one of {', '.join(WEIGHTS)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.ce_weight < 0:
            raise ValueError(f"ce_weight must be ≥ 0, got {self.ce_weight}")
        if self.ce_weight and self.teacher is None:
            raise ValueError(f"ce_weight={self.ce_weight} weighs the hard-label CE next to a teacher's distribution "
                             "loss, but no teacher is given (without one the loss is plain CE)")
        for name in ("teacher", "init_from"):
            path = getattr(self, name)
            if path is not None:
                if not Path(path).is_file():
                    raise CheckpointError(f"{name}: no checkpoint file at {str(path)!r}")
                object.__setattr__(self, name, str(path))
        if self.train_size is not None and (self.dataset_info.imagenet_format or self.train_size < 1):
            raise ValueError(f"train_size is for the small in-memory datasets and ≥ 1, got {self.train_size} for "
                             f"{self.dataset!r}")
        if self.arch is None:
            object.__setattr__(self, "arch", catalog.DATASETS[self.dataset].default_arch)
        if self.milestones is not None:
            object.__setattr__(self, "milestones", tuple(self.milestones))

    @property
    def dataset_info(self) -> catalog.Dataset:
        return catalog.DATASETS[self.dataset]

    def recipe_for(self, world_size: int = 1) -> Recipe:
        """The named recipe with this config's overrides; the batch is per worker (the global one ÷ world size)."""
        base = get_recipe(self.recipe, epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                          milestones=self.milestones)
        return replace(base, batch_size=max(1, (self.batch_size or base.batch_size) // world_size))

    def describe(self) -> str:
        rho = f" ρ={self.rho}" if catalog.takes_rho(self.binarizer) else ""
        extra = "".join([", real weights" if self.weights == "real" else "",
                         f", from {self.init_from}" if self.init_from else "",
                         f", teacher {self.teacher}" if self.teacher else ""])
        return f"{self.arch} / {self.binarizer}{rho} on {self.dataset}{extra}"


WEIGHTS = ("binary", "real")


def build_loaders(cfg: TrialConfig, batch_size: int, *, device: torch.device, shard_id: int = 0,
                  num_shards: int = 1):
    """Train and validation loaders of one rank; returns (train, val, num_classes, input_shape)."""
    if cfg.dataset_info.imagenet_format:
        from sibnn.data import ImageNetLoader

        if cfg.data_root is None:
            raise DatasetError(f"dataset {cfg.dataset!r} needs a data root (--data-root DIR with train/ and val/)")
        size = cfg.image_size or model_info(cfg.arch).input_size
        common = dict(shard_id=shard_id, num_shards=num_shards, device=str(device), policy=cfg.policy,
                      image_size=size, fmt=cfg.data_format, seed=cfg.seed, channels_last=cfg.channels_last,
                      dtype=torch.bfloat16 if cfg.amp else torch.float32)
        if device.type == "cuda":
            common["device"] = f"cuda:{device.index or 0}"
        train = ImageNetLoader(cfg.data_root, "train", batch_size, **common)
        val = ImageNetLoader(cfg.data_root, "val", batch_size, **common)
        return train, val, train.num_classes, (3, size, size)
    ds = load_small_dataset(cfg.dataset, cfg.data_root, train_size=cfg.train_size)
    train, val = small_loaders(ds, batch_size, shard_id=shard_id, num_shards=num_shards, seed=cfg.seed, device=device)
    return train, val, ds.num_classes, ds.input_shape


def build_model(cfg: TrialConfig, num_classes: int, input_shape: tuple) -> nn.Module:
    """The registry's model for ``cfg``, fitted to the data's channels (and pixel count, for an MLP); with
    ``weights="real"`` its binary layers keep real-valued weights; with ``init_from`` it starts from that
    checkpoint's model weights."""
    model = create_model(cfg.arch, cfg.binarizer, cfg.rho, num_classes, weight_grad=cfg.weight_grad, init=cfg.init,
                         **model_info(cfg.arch).input_kwargs(input_shape))
    if cfg.weights == "real":
        set_real_weights_(model)
    if cfg.init_from is not None:
        load_model_weights_(model, cfg.init_from)
    return model


def set_real_weights_(model: nn.Module) -> nn.Module:
    """Step 1 of two-step training (ReActNet [code] ``resnet/1_step1``: binary activations, real-valued convs):
    every binary layer keeps its input binarizer but uses its latent weights as they are. ``clamp_latent_weights_``
    skips such layers (it clamps only ``binary_weight`` layers), so the real weights are not held to [−1, 1]."""
    for _, layer in binary_layers(model):
        layer.binary_weight = False
    return model


def load_model_weights_(model: nn.Module, checkpoint) -> nn.Module:
    """Copy a sibnn checkpoint's model weights into ``model`` (not its optimiser, scheduler or epoch), every key
    matched strictly; a mismatch is a ``CheckpointError`` naming the keys."""
    ckpt = load_checkpoint(checkpoint)
    weights, own = ckpt["model"], model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = sorted(k for k in set(own) & set(weights) if tuple(own[k].shape) != tuple(weights[k].shape))
    if missing or unexpected or shapes:
        def keys(ks):
            return ", ".join(ks[:8]) + (f" (+{len(ks) - 8} more)" if len(ks) > 8 else "")
        problems = [f"{what}: {keys(ks)}" for what, ks in (("missing in the checkpoint", missing),
                                                           ("not in the model", unexpected),
                                                           ("of another shape", shapes)) if ks]
        name = checkpoint if isinstance(checkpoint, (str, Path)) else "checkpoint"
        raise CheckpointError(f"init_from {name}: its weights ({ckpt['config'].get('arch')}) do not match the model; "
                              + "; ".join(problems))
    model.load_state_dict(weights)
    return model


def load_teacher(checkpoint, num_classes: int, device: torch.device) -> nn.Module:
    """The distillation teacher: the checkpoint's model on ``device``, in eval mode (BatchNorm statistics frozen),
    no gradients; it is never handed to the optimiser."""
    ckpt = load_checkpoint(checkpoint)
    classes = ckpt["config"].get("num_classes")
    if classes is not None and classes != num_classes:
        raise CheckpointError(f"teacher {checkpoint}: its model has {classes} classes, the data {num_classes}")
    teacher = model_from_checkpoint(ckpt)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.to(device).eval()


@dataclass
class Trial:
    """A built trial: ``model`` is what the optimiser holds (DDP-wrapped under Ray Train), ``net`` what runs
    (``model`` compiled when ``config.compile``)."""

    config: TrialConfig
    recipe: Recipe
    device: torch.device
    model: nn.Module
    net: nn.Module
    train: object
    val: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    num_classes: int
    input_shape: tuple
    extra: dict = field(default_factory=dict)  # more entries for the checkpoint's config (the jobs' trial spec)
    teacher: nn.Module | None = None           # the distillation teacher (``config.teacher``), frozen, on ``device``

    def fit(self, state: TrainState | None = None, **kwargs) -> TrainState:
        """``sibnn.engine.fit`` with this trial's parts (kwargs: on_epoch, reduce, ...)."""
        c = self.config
        return fit(self.net, self.train, self.val, self.recipe, device=self.device, amp=c.amp,
                   channels_last=c.channels_last, optimizer=self.optimizer, scheduler=self.scheduler,
                   state=state, label_smoothing=c.label_smoothing, teacher=self.teacher,
                   distill=Distill(ce_weight=c.ce_weight) if self.teacher is not None else None, **kwargs)

    def checkpoint_config(self) -> dict:
        """What a checkpoint needs to rebuild the model (``model_from_checkpoint``) and to say how it was trained."""
        c = self.config
        return {"arch": c.arch, "binarizer": c.binarizer, "rho": c.rho if catalog.takes_rho(c.binarizer) else None,
                "weight_grad": c.weight_grad, "init": c.init, "dataset": c.dataset, "num_classes": self.num_classes,
                "input_shape": list(self.input_shape), **model_info(c.arch).input_kwargs(self.input_shape),
                "weights": c.weights, "init_from": c.init_from, "teacher": c.teacher, "ce_weight": c.ce_weight,
                "label_smoothing": c.label_smoothing, **self.extra}

    def checkpoint(self, state: TrainState) -> dict:
        """Model, optimiser, scheduler, epoch, RNG state, history and config: enough to resume or to export."""
        return checkpoint_dict(self.model, self.optimizer, self.scheduler, state, self.checkpoint_config())

    def restore(self, ckpt: dict) -> TrainState:
        return restore_checkpoint(ckpt, self.model, self.optimizer, self.scheduler)


def build_trial(cfg: TrialConfig, *, device: torch.device, shard_id: int = 0, num_shards: int = 1,
                prepare: Callable[[nn.Module], nn.Module] | None = None) -> Trial:
    """Seed, data of this rank, model, optimiser and per-iteration scheduler. ``prepare`` moves/wraps the model
    (Ray Train's ``prepare_model``: DDP); without it the model is moved to ``device``."""
    recipe = cfg.recipe_for(num_shards)
    # Same initial weights on every rank (DDP also broadcasts them); the seed also fixes the data order.
    seed_everything(cfg.seed)
    train, val, num_classes, input_shape = build_loaders(cfg, recipe.batch_size, device=device, shard_id=shard_id,
                                                         num_shards=num_shards)
    # init_from is loaded here, before DDP wraps the model (every rank loads the same file; DDP broadcasts anyway).
    model = build_model(cfg, num_classes, input_shape)
    teacher = load_teacher(cfg.teacher, num_classes, device) if cfg.teacher is not None else None
    model = prepare(model) if prepare is not None else model.to(device)
    net = torch.compile(model) if cfg.compile else model  # checkpoints unwrap it (sibnn.engine.unwrap)
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe, len(train))
    return Trial(cfg, recipe, device, model, net, train, val, optimizer, scheduler, num_classes, tuple(input_shape),
                 teacher=teacher)


class CheckpointError(ValueError):
    """A file or dict that is not a sibnn checkpoint."""


def load_checkpoint(checkpoint, map_location="cpu") -> dict:
    """A checkpoint dict from a path or a dict, checked to hold the model's weights and a config naming it."""
    ckpt = torch.load(checkpoint, map_location=map_location, weights_only=False) \
        if isinstance(checkpoint, (str, Path)) else checkpoint
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{checkpoint if isinstance(checkpoint, (str, Path)) else 'checkpoint'}: not a sibnn "
                              "checkpoint (needs 'model' and 'config' entries)")
    missing = [k for k in ("arch", "binarizer") if k not in ckpt["config"]]
    if missing:
        raise CheckpointError(f"checkpoint config lacks {', '.join(missing)}")
    return ckpt


def model_from_checkpoint(checkpoint) -> nn.Module:
    """The trained model, in eval mode, from a checkpoint (path or dict) written by ``Trial.checkpoint``."""
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt["config"]
    kw = {k: cfg[k] for k in ("in_channels", "input_size") if k in cfg}
    rho = cfg.get("rho")
    model = create_model(cfg["arch"], cfg["binarizer"], RHO_DEFAULT if rho is None else rho, cfg.get("num_classes"),
                         weight_grad=cfg.get("weight_grad", "authors"), **kw)
    if cfg.get("weights", "binary") == "real":
        set_real_weights_(model)
    model.load_state_dict(ckpt["model"])
    return model.eval()


def input_shape(config: dict) -> tuple[int, int, int]:
    """(C, H, W) of a checkpoint config's model input: as trained when recorded, else the model's paper size."""
    if config.get("input_shape"):
        return tuple(config["input_shape"])
    info = catalog.model_facts(config["arch"]) if config.get("arch") in catalog.MODELS else None
    channels = config.get("in_channels") or (info.in_channels if info else 3)
    size = config.get("input_size") or (info.input_size if info else 224)
    return channels, size, size


def training_data(config: dict) -> catalog.Dataset:
    """The dataset a checkpoint config's model was trained on (its normalisation, its input pipeline): as recorded,
    else the architecture's usual one."""
    name = config.get("dataset") or (catalog.MODELS[config["arch"]].dataset if config.get("arch") in catalog.MODELS
                                     else "imagenet")
    return catalog.dataset_info(name)
