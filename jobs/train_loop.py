"""The per-worker training loop of one trial: ``sibnn.engine.fit`` under Ray Train (DDP), reporting every epoch.

Every rank: its shard of the data (sharded by world rank; DALI on the worker's own device for ImageNet-format
data), the model from the registry wrapped for DDP (NCCL on GPU, gloo on CPU), the named recipe, metrics summed
over ranks. Every rank calls ``ray.train.report`` each epoch; rank 0 attaches the checkpoint (model, optimiser,
scheduler, epoch, RNG state, history) and is the only one that writes to MLflow. On a restart after a failure the
loop resumes from ``ray.train.get_checkpoint()`` and first backfills any epoch MLflow missed, so a run's history
has every epoch exactly once.

One entry function, ``train_trial``, runs wherever the trial's runner (``jobs.runners``) trains: on each Ray Train
worker (the default runner) or in the trial's own Ray Tune process (the spec's ``resources.runner = "tune"``: one CPU
process, no Ray Train actors; it reports and resumes through Tune's checkpoints instead of Train's). The runner's
``Session`` is all that differs; the loop below is the same.

A trial that needs others (a teacher to distil from, an earlier stage to start from: ``TrialSpec.needs``) gets their
checkpoints as URIs (``LoopConfig.needs``, resolved by the sweep); every training process makes each a local folder
for as long as it trains (``Checkpoint.as_directory``: the folder itself on shared storage, a download from an object
store) and hands the file in it to the library (``TrialConfig.teacher``, ``init_from``). A resumed trial starts from
its own checkpoint: the restore below overwrites what ``init_from`` loaded.
"""
from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from mlflow.entities import RunTag

from jobs import tracking
from jobs.manifest import manifest
from jobs.runners import LOOP_KEY, Runner, Session, runner_for
from jobs.settings import JobSettings
from jobs.spec import ExperimentSpec, TrialSpec
from sibnn.catalog import RHO_DEFAULT, weight_grad_for
from sibnn.engine import TrainState
from sibnn.trial import TrialConfig, build_trial

CHECKPOINT_FILE = "checkpoint.pt"


def trial_config(spec: ExperimentSpec, trial: TrialSpec, *, data_root: str | None = None,
                 use_cuda: bool = False, needs: dict[str, str] | None = None) -> TrialConfig:
    """One trial of the spec as the library's TrialConfig: with its own recipe (a teacher's, a stage's) and weights
    where it has them. ``needs``: role → a local checkpoint file of the trial it needs ("teacher", "init"). AMP,
    channels-last and compile are GPU-worker options: on CPU workers they are off."""
    r, ds = spec.recipe_of(trial), spec.dataset
    needs = needs or {}
    # what only a teacher, a stage or a distilled trial has: given only then (the library's defaults otherwise)
    extra = {k: v for k, v in (("teacher", needs.get("teacher")), ("init_from", needs.get("init")),
                               ("weights", trial.weights), ("label_smoothing", r.label_smoothing or None),
                               ("ce_weight", r.ce_weight or None)) if v is not None}
    return TrialConfig(
        dataset=ds.kind, arch=trial.arch, binarizer=trial.binarizer,
        rho=trial.rho if trial.rho is not None else RHO_DEFAULT, recipe=r.name, epochs=r.epochs,
        batch_size=r.batch_size, lr=r.lr, weight_decay=r.weight_decay, milestones=r.milestones,
        weight_grad=weight_grad_for(trial.binarizer, r.weight_grad), seed=trial.seed, data_root=data_root or ds.root, data_format=ds.format,
        policy=ds.policy, image_size=ds.image_size, train_size=ds.train_size, amp=r.amp and use_cuda,
        channels_last=r.channels_last and use_cuda, compile=r.compile and use_cuda, **extra)


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


@dataclass(frozen=True)
class LoopConfig:
    """What one trial's loop needs, typed: the validated spec and trial, where MLflow is and which run is the trial's,
    the data, and the job's settings (read once, by the driver).

    It crosses two process boundaries as it is: into the Tune trial's process and, runner "train", into every Ray
    Train worker. Ray pickles both (cloudpickle), so the object arrives whole and is not parsed again: the spec was
    validated once, in the driver. Ray Train's ``train_loop_config`` must be a dict (``TorchTrainer(...,
    train_loop_config: Dict | None)``; its guide: "the input argument for train_func as a dictionary"), so the runner
    passes ``{LOOP_KEY: loop}`` and ``train_trial`` takes it out; nothing else travels in that dict."""

    spec: ExperimentSpec
    trial: TrialSpec
    experiment_id: str
    mlflow_uri: str
    mlflow_run_id: str
    data_root: str | None
    data_fingerprint: str
    settings: JobSettings
    # role ("teacher", "init") → the checkpoint URI of the trial it needs (``jobs.sweep.resolve_needs``)
    needs: dict[str, str] = field(default_factory=dict)

    @property
    def runner(self) -> Runner:
        return runner_for(self.spec)


def train_trial(config: dict):
    """The trial's entry function, run where its runner trains (``Runner.fit``): each Ray Train worker gets it as
    ``train_loop_per_worker``, runner "tune" calls it in the Tune trial. Returns what the runner's session knows of
    the best and the latest checkpoint (runner "tune"; Ray Train ranks its own)."""
    loop: LoopConfig = config[LOOP_KEY]
    session = loop.runner.session()
    run_trial_loop(loop, session)
    return session.best_checkpoint(), session.latest_checkpoint()


def run_trial_loop(loop: LoopConfig, session: Session) -> None:
    with contextlib.ExitStack() as stack:
        _train(loop, session, needed_files(loop.needs, stack, loop.mlflow_uri))


def needed_files(needs: dict[str, str], stack: contextlib.ExitStack, mlflow_uri: str | None = None) -> dict[str, str]:
    """role → the checkpoint file of each needed trial, in a local folder until ``stack`` closes: a Ray checkpoint
    (shared storage or an object store), or a teacher trained before, downloaded from MLflow (``runs:/...``)."""
    from ray.train import Checkpoint

    out = {}
    for role, uri in needs.items():
        if uri.startswith("runs:/"):
            import mlflow.artifacts

            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="sibnn-need-"))
            out[role] = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder, tracking_uri=mlflow_uri)
        else:
            out[role] = str(Path(stack.enter_context(Checkpoint(uri).as_directory())) / CHECKPOINT_FILE)
    return out


def _train(loop: LoopConfig, session: Session, needs: dict[str, str]) -> None:
    spec, trial = loop.spec, loop.trial
    rank, world = session.rank, session.world
    device = torch.device(session.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        # GPUs Ray handed out that torch cannot see (a test cluster declaring fake GPUs): train on the CPU
        device = torch.device("cpu")
    threads = trial_threads(spec)
    torch.set_num_threads(threads)  # before anything computes (the seeded init included)
    cfg = trial_config(spec, trial, data_root=loop.data_root, use_cuda=device.type == "cuda", needs=needs)
    # this rank's shard of the data; the model wrapped for DDP when world > 1
    t = build_trial(cfg, device=device, shard_id=rank, num_shards=world, prepare=session.prepare(device))
    t.extra["trial"] = trial.model_dump()
    if loop.needs:  # where the needed checkpoints live (the files above may be temporary downloads)
        t.extra["needs"] = {role: {"trial_id": trial.needs[role], "checkpoint": uri} for role, uri in loop.needs.items()}

    state = TrainState()
    ckpt = session.resume_from()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = t.restore(torch.load(Path(d) / CHECKPOINT_FILE, map_location=device, weights_only=False))
        session.resumed(state.history)
        # the data order depends on (seed, epoch) only, so the resumed epochs see what they would have seen
        if rank == 0:
            print(f"sibnn: {trial.trial_id} resumes from its checkpoint after epoch {state.epoch}", flush=True)

    client = run_id = None
    logged: set[int] = set()
    if rank == 0:
        client = tracking.client(loop.mlflow_uri)
        run_id = loop.mlflow_run_id
        tracking.set_trial_state(client, run_id, "RUNNING")
        tags = manifest(device, trial.seed, loop.data_fingerprint, threads=threads,
                        declared_commit=loop.settings.git_commit)
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
