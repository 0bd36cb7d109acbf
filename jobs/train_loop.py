"""The per-worker training loop of one trial: ``sibnn.engine.fit`` under Ray Train (DDP), reporting every epoch.

Every rank: its shard of the data (sharded by world rank; DALI on the worker's own device for ImageNet-format
data), the model from the registry wrapped for DDP (NCCL on GPU, gloo on CPU), the named recipe, metrics summed
over ranks. Every rank calls ``ray.train.report`` each epoch; rank 0 attaches the checkpoint (model, optimiser,
scheduler, epoch, RNG state, history) and is the only one that writes to MLflow. On a restart after a failure the
loop resumes from ``ray.train.get_checkpoint()`` and first backfills any epoch MLflow missed, so a run's history
has every epoch exactly once.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from mlflow.entities import RunTag

from jobs import tracking
from jobs.manifest import manifest
from jobs.spec import ExperimentSpec, TrialSpec
from sibnn.engine import TrainState, checkpoint_dict, fit, restore_checkpoint, seed_everything
from sibnn.models import create_model
from sibnn.recipe import build_optimizer, build_scheduler, get_recipe
from sibnn.train import build_loaders, model_kwargs

CHECKPOINT_FILE = "checkpoint.pt"


def recipe_for(spec: ExperimentSpec, world_size: int):
    r = spec.recipe
    overrides = {"epochs": r.epochs, "batch_size": max(1, r.batch_size // world_size), "lr": r.lr,
                 "weight_decay": r.weight_decay}
    if r.milestones is not None:
        overrides["milestones"] = tuple(r.milestones)
    return get_recipe(r.name, **overrides)


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    # gloo and NCCL both sum float64 on the collective's device; NCCL needs the tensor on the GPU.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    out = t.to(device)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.cpu()


def train_loop_per_worker(config: dict) -> None:
    spec = ExperimentSpec.model_validate(config["spec"])
    trial = TrialSpec.model_validate(config["trial"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        # GPUs Ray handed out that torch cannot see (a test cluster declaring fake GPUs): train on the CPU
        device = torch.device("cpu")
    use_cuda = device.type == "cuda"
    amp = spec.recipe.amp and use_cuda
    channels_last = spec.recipe.channels_last and use_cuda
    recipe = recipe_for(spec, world)

    # Same initial weights on every rank (DDP also broadcasts them); the seed also fixes the data order.
    seed_everything(trial.seed)
    ds = spec.dataset
    train, val, num_classes, input_shape = build_loaders(
        ds.kind if not ds.is_imagenet_format else "imagenet", config.get("data_root") or ds.root,
        recipe.batch_size, arch=trial.arch, device=device, seed=trial.seed, shard_id=rank, num_shards=world,
        fmt=ds.format, policy=ds.policy, amp=amp, channels_last=channels_last, image_size=ds.image_size)
    model = create_model(trial.arch, trial.binarizer, trial.rho if trial.rho is not None else 0.3, num_classes,
                         weight_grad=spec.recipe.weight_grad, **model_kwargs(trial.arch, input_shape))
    model = ray.train.torch.prepare_model(model, move_to_device=device)  # DDP when world > 1
    if spec.recipe.compile and use_cuda:
        model = torch.compile(model)  # checkpoints unwrap it (sibnn.engine.unwrap)
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe, len(train))

    state = TrainState()
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = restore_checkpoint(torch.load(Path(d) / CHECKPOINT_FILE, map_location=device,
                                                  weights_only=False), model, optimizer, scheduler)
        # the data order depends on (seed, epoch) only, so the resumed epochs see what they would have seen
        if rank == 0:
            print(f"sibnn: {trial.trial_id} resumes from its checkpoint after epoch {state.epoch}", flush=True)

    client = run_id = None
    logged: set[int] = set()
    if rank == 0:
        client = tracking.client(config["mlflow_uri"])
        run_id = config["mlflow_run_id"]
        tracking.set_trial_state(client, run_id, "RUNNING")
        tags = manifest(device, trial.seed, config["data_fingerprint"])
        client.log_batch(run_id, tags=[RunTag(f"sibnn.manifest.{k}", v) for k, v in tags.items()])
        logged = tracking.logged_epochs(client, run_id)
        for h in state.history:  # epochs completed before a failure but never logged
            if h["epoch"] not in logged:
                tracking.log_epoch(client, run_id, h["epoch"], h)
                logged.add(h["epoch"])

    epoch_start = [time.perf_counter()]

    def on_epoch(epoch: int, metrics: dict, st: TrainState) -> None:
        metrics["epoch_seconds"] = time.perf_counter() - epoch_start[0]
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                torch.save(checkpoint_dict(model, optimizer, scheduler, st,
                                           {"arch": trial.arch, "binarizer": trial.binarizer, "rho": trial.rho,
                                            "num_classes": num_classes, "trial": trial.model_dump(),
                                            **model_kwargs(trial.arch, input_shape)}), Path(d) / CHECKPOINT_FILE)
                ray.train.report(scalars, checkpoint=ray.train.Checkpoint.from_directory(d))
            # An epoch can run twice: when the cluster dies after MLflow got it but before Train recorded its
            # checkpoint, the resumed run repeats it. MLflow keeps the first; each epoch appears exactly once.
            if epoch not in logged:
                tracking.log_epoch(client, run_id, epoch, metrics)
                logged.add(epoch)
        else:
            ray.train.report(scalars)
        epoch_start[0] = time.perf_counter()

    fit(model, train, val, recipe, device=device, amp=amp, channels_last=channels_last, reduce=_all_reduce_sum,
        state=state, optimizer=optimizer, scheduler=scheduler, on_epoch=on_epoch)
