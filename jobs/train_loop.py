"""The per-worker training loop of one trial: ``sibnn.engine.fit`` under Ray Train (DDP), reporting every epoch.

Every rank: its shard of the data (sharded by world rank; DALI on the worker's own device for ImageNet-format
data), the model from the registry wrapped for DDP (NCCL on GPU, gloo on CPU), the named recipe, metrics summed
over ranks. Every rank calls ``ray.train.report`` each epoch; rank 0 attaches the checkpoint (model, optimiser,
scheduler, epoch, RNG state, history) and is the only one that writes to MLflow. On a restart after a failure the
loop resumes from ``ray.train.get_checkpoint()`` and first backfills any epoch MLflow missed, so a run's history
has every epoch exactly once.

The same loop runs in two places (``Session``): a Ray Train worker (``train_loop_per_worker``, the default runner) or
the trial's own Ray Tune process (``train_in_tune_trial``, the spec's ``resources.runner = "tune"``: one CPU
process, no Ray Train actors; it reports and resumes through Tune's checkpoints instead of Train's).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray import tune

from mlflow.entities import RunTag

from jobs import tracking
from jobs.manifest import manifest
from jobs.spec import ExperimentSpec, TrialSpec
from sibnn.catalog import RHO_DEFAULT
from sibnn.engine import TrainState
from sibnn.trial import TrialConfig, build_trial

CHECKPOINT_FILE = "checkpoint.pt"


def trial_config(spec: ExperimentSpec, trial: TrialSpec, *, data_root: str | None = None,
                 use_cuda: bool = False) -> TrialConfig:
    """One grid point of the spec as the library's TrialConfig. AMP, channels-last and compile are GPU-worker
    options: on CPU workers they are off."""
    r, ds = spec.recipe, spec.dataset
    return TrialConfig(
        dataset=ds.kind, arch=trial.arch, binarizer=trial.binarizer,
        rho=trial.rho if trial.rho is not None else RHO_DEFAULT, recipe=r.name, epochs=r.epochs,
        batch_size=r.batch_size, lr=r.lr, weight_decay=r.weight_decay, milestones=r.milestones,
        weight_grad=r.weight_grad, seed=trial.seed, data_root=data_root or ds.root, data_format=ds.format,
        policy=ds.policy, image_size=ds.image_size, train_size=ds.train_size, amp=r.amp and use_cuda,
        channels_last=r.channels_last and use_cuda, compile=r.compile and use_cuda)


def trial_threads(spec: ExperimentSpec) -> int:
    """torch's intra-op threads for one worker of a trial: its whole CPUs, at least one. A float reduction's result
    depends on how many threads split it, so a trial's numbers depend on (spec, seed, hardware, this count) only —
    not on the machine's cores or on what else runs beside it."""
    return max(1, int(spec.resources.cpus_per_worker))


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    # gloo and NCCL both sum float64 on the collective's device; NCCL needs the tensor on the GPU.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    out = t.to(device)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.cpu()


@dataclass
class Session:
    """Where the loop runs: this process's rank among ``world``, its device, how to wrap the model (DDP), how to
    report an epoch (metrics, and a checkpoint folder on rank 0) and the checkpoint to resume from."""

    rank: int
    world: int
    device: torch.device
    report: Callable[[dict, str | None], None]
    resume_from: Callable[[], object]  # a Ray (Train or Tune) Checkpoint, or None
    prepare: Callable | None = None


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's per-worker function (runner "train")."""
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        # GPUs Ray handed out that torch cannot see (a test cluster declaring fake GPUs): train on the CPU
        device = torch.device("cpu")

    def report(scalars: dict, folder: str | None) -> None:
        ray.train.report(scalars, checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None)

    run_trial_loop(config, Session(
        rank=ctx.get_world_rank(), world=ctx.get_world_size(), device=device, report=report,
        resume_from=ray.train.get_checkpoint,
        prepare=lambda m: ray.train.torch.prepare_model(m, move_to_device=device)))


def train_in_tune_trial(config: dict):
    """Runner "tune": the whole trial in this Tune trial's process, on its CPU. Each epoch goes to
    ``tune.report`` with its checkpoint, which Tune persists under the trial's folder (and keeps per the sweep's
    ``CheckpointConfig``); a retried or restored trial resumes from ``tune.get_checkpoint()``. Returns the best
    persisted checkpoint by val_top1 (the latest of equals, as Tune ranks them) among those this process reported
    or resumed from."""
    best = {"val": float("-inf"), "checkpoint": None}
    resumed = tune.get_checkpoint()
    if resumed is not None:
        best["checkpoint"] = resumed
        with resumed.as_directory() as d:
            hist = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)["state"]["history"]
        best["val"] = hist[-1]["val_top1"] if hist else float("-inf")

    def report(scalars: dict, folder: str | None) -> None:
        tune.report(scalars, checkpoint=tune.Checkpoint.from_directory(folder) if folder else None)
        if folder and scalars["val_top1"] >= best["val"]:
            # after a report, Tune's latest checkpoint is the one it just persisted
            best.update(val=scalars["val_top1"], checkpoint=tune.get_checkpoint())

    run_trial_loop(config, Session(rank=0, world=1, device=torch.device("cpu"), report=report,
                                   resume_from=lambda: resumed))
    return best["checkpoint"]


def run_trial_loop(config: dict, session: Session) -> None:
    spec = ExperimentSpec.model_validate(config["spec"])
    trial = TrialSpec.model_validate(config["trial"])
    rank, world, device = session.rank, session.world, session.device
    threads = trial_threads(spec)
    torch.set_num_threads(threads)  # before anything computes (the seeded init included)
    cfg = trial_config(spec, trial, data_root=config.get("data_root"), use_cuda=device.type == "cuda")
    # this rank's shard of the data; the model wrapped for DDP when world > 1
    t = build_trial(cfg, device=device, shard_id=rank, num_shards=world, prepare=session.prepare)
    t.extra["trial"] = trial.model_dump()

    state = TrainState()
    ckpt = session.resume_from()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = t.restore(torch.load(Path(d) / CHECKPOINT_FILE, map_location=device, weights_only=False))
        # the data order depends on (seed, epoch) only, so the resumed epochs see what they would have seen
        if rank == 0:
            print(f"sibnn: {trial.trial_id} resumes from its checkpoint after epoch {state.epoch}", flush=True)

    client = run_id = None
    logged: set[int] = set()
    if rank == 0:
        client = tracking.client(config["mlflow_uri"])
        run_id = config["mlflow_run_id"]
        tracking.set_trial_state(client, run_id, "RUNNING")
        tags = manifest(device, trial.seed, config["data_fingerprint"], threads=threads)
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
                torch.save(t.checkpoint(st), Path(d) / CHECKPOINT_FILE)
                session.report(scalars, d)
            # An epoch can run twice: when the cluster dies after MLflow got it but before the checkpoint was
            # recorded, the resumed run repeats it. MLflow keeps the first; each epoch appears exactly once.
            if epoch not in logged:
                tracking.log_epoch(client, run_id, epoch, metrics)
                logged.add(epoch)
        else:
            session.report(scalars, None)
        epoch_start[0] = time.perf_counter()

    t.fit(state, reduce=_all_reduce_sum, on_epoch=on_epoch)
