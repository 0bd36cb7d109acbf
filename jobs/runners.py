"""How a trial runs — the spec's ``resources.runner`` — as one object per runner, chosen once from the spec.

``train`` (the default): the trial is one Ray Train run (``TorchTrainer``), DDP over ``workers_per_trial`` workers;
its Tune trial is a driver function holding a sliver of CPU while it waits. ``tune``: the trial trains in its Tune
trial's own process, on the worker's CPUs; no Ray Train actors are started (for a small model on a small machine
their start-up, six processes per trial, costs more than the training: docs/demo.md).

Everything that differs between the two is a method of its runner, and every other place asks the runner: the spec
(which resources it allows), the sweep (what a Tune trial asks for and holds, how the Tune run keeps checkpoints and
retries, how a trial is fitted) and the training loop (its ``Session``: rank, device, how an epoch is reported and
where a resumed run's checkpoint comes from). ``runner_for(spec)`` is the one place that reads the name.

This module imports no torch and none of the loop: the spec imports it, and the API process, which validates specs,
never imports torch. ``Runner.fit`` is handed the loop's entry function (``jobs.train_loop.train_trial``) instead;
Ray, Tune and Train are imported where a method needs them, on the processes that train.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

# The annotations name jobs.spec's ExperimentSpec and ResourcesSpec and jobs.train_loop's LoopConfig without importing
# them (not even under TYPE_CHECKING, which import-linter counts): the spec imports this module, the loop imports torch.

DRIVER_CPU = 0.01  # a Tune driver function only waits on its trainer; a whole CPU each would deadlock small boxes
# Ray's Tune-over-Train guide: driver functions run on a "safe" node that declares a custom resource (the head in
# compose, KubeRay and the embedded stack: `--resources '{"TRAIN_DRIVER_RESOURCE": 1}'`), never on the GPU nodes
# they would keep from scaling down. A sliver each: up to 100 drivers on the head.
DRIVER_RESOURCE = "TRAIN_DRIVER_RESOURCE"
DRIVER_RESOURCE_SHARE = 0.01
TRAIN_MAX_FAILURES = 2  # worker crashes a trial survives (it resumes from its last checkpoint)
TUNE_MAX_FAILURES = 1   # driver-function failures Tune retries
BEST_BY = "val_top1"    # the metric that ranks a trial's checkpoints (higher is better)
# The checkpoints a trial keeps, whoever keeps them: the two best by BEST_BY (and the latest).
KEEP = {"num_to_keep": 2, "checkpoint_score_attribute": BEST_BY, "checkpoint_score_order": "max"}
LOOP_KEY = "loop"  # the key of the LoopConfig in the dict the entry function gets (Ray Train's train_loop_config)


class Session(ABC):
    """Where the training loop runs: this process's rank among ``world``, the device it was given, how an epoch is
    reported (metrics, and a checkpoint folder on rank 0) and the checkpoint a restarted run resumes from."""

    rank: int = 0
    world: int = 1
    device: Any = "cpu"  # a torch.device or its name; the loop makes it a torch.device

    @abstractmethod
    def report(self, scalars: dict, folder: str | None) -> None:
        """One epoch's scalars, and (rank 0) the folder holding its checkpoint."""

    @abstractmethod
    def resume_from(self):
        """A Ray (Train or Tune) Checkpoint to resume from, or None."""

    def prepare(self, device) -> Callable | None:
        """How ``sibnn.trial.build_trial`` moves and wraps the model on ``device``; None: it is moved as it is."""
        return None

    def resumed(self, history: list[dict]) -> None:
        """Told the history of the checkpoint the run resumed from."""

    def best_checkpoint(self):
        """The best checkpoint this session knows of, when the runner's ``fit`` needs it from the loop."""
        return None

    def latest_checkpoint(self):
        """The last checkpoint this session persisted (or resumed from), when the runner's ``fit`` needs it."""
        return None


class _TrainWorkerSession(Session):
    """A Ray Train worker: Train ranks, reports and keeps the checkpoints (rank 0 attaches them)."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def report(self, scalars: dict, folder: str | None) -> None:
        import ray.train

        ray.train.report(scalars, checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None)

    def resume_from(self):
        import ray.train

        return ray.train.get_checkpoint()

    def prepare(self, device) -> Callable:
        import ray.train.torch

        return lambda model: ray.train.torch.prepare_model(model, move_to_device=device)


class _TuneTrialSession(Session):
    """The Tune trial's own process, on its CPU: each epoch goes to ``tune.report`` with its checkpoint, which Tune
    persists under the trial's folder (and keeps per the sweep's ``CheckpointConfig``); a retried or restored trial
    resumes from ``tune.get_checkpoint()``. It remembers the best persisted checkpoint by BEST_BY (the latest of
    equals, as Tune ranks them) among those it reported or resumed from: that is what the trial's run records; and
    the latest one (the final model, once the loop is done)."""

    def __init__(self):
        from ray import tune

        self._resumed = tune.get_checkpoint()
        self._best, self._best_value = self._resumed, float("-inf")
        self._latest = self._resumed

    def report(self, scalars: dict, folder: str | None) -> None:
        from ray import tune

        tune.report(scalars, checkpoint=tune.Checkpoint.from_directory(folder) if folder else None)
        if folder:
            # after a report, Tune's latest checkpoint is the one it just persisted
            self._latest = tune.get_checkpoint()
            if scalars[BEST_BY] >= self._best_value:
                self._best, self._best_value = self._latest, scalars[BEST_BY]

    def resume_from(self):
        return self._resumed

    def resumed(self, history: list[dict]) -> None:
        self._best_value = history[-1][BEST_BY] if history else float("-inf")

    def best_checkpoint(self):
        return self._best

    def latest_checkpoint(self):
        return self._latest


class Runner(ABC):
    """What one runner means; stateless, so one instance per runner serves every trial (and pickles)."""

    name: ClassVar[str]

    def resources_error(self, workers_per_trial: int | None, gpus_per_worker: float | None) -> str | None:
        """Why the spec's resources do not suit this runner, or None (the spec's validator asks)."""
        return None

    @abstractmethod
    def trial_cpus(self, res: ResourcesSpec) -> float:
        """CPUs one trial holds while it runs (the sweep's concurrency and feasibility)."""

    @abstractmethod
    def trial_request(self, res: ResourcesSpec | None, cluster: dict) -> dict:
        """What each Tune trial asks for, on a cluster with these resources (``ray.cluster_resources()``)."""

    @abstractmethod
    def need_detail(self) -> str:
        """What a trial holds besides its workers, for the message of a trial that cannot fit."""

    @abstractmethod
    def tune_run_options(self) -> dict:
        """The Tune ``RunConfig``'s failure and checkpoint options for trials of this runner."""

    @abstractmethod
    def fit(self, entry: Callable[[dict], Any], loop: LoopConfig, *, run_name: str, storage_path: str,
            torch_backend: str | None):
        """Train one trial: run ``entry({LOOP_KEY: loop})`` where this runner trains; returns the trial's best and
        final checkpoints (Ray Checkpoints, or None each) as a pair. Called in the trial's Tune trial process."""

    @abstractmethod
    def session(self) -> Session:
        """The loop's session, on the process that trains (a Train worker, or the Tune trial)."""


class TrainRunner(Runner):
    name = "train"

    def trial_cpus(self, res: ResourcesSpec) -> float:
        return res.workers_per_trial * res.cpus_per_worker + DRIVER_CPU

    def trial_request(self, res: ResourcesSpec | None, cluster: dict) -> dict:
        """A sliver of CPU, and of the head's driver resource when the cluster declares it (a cluster that does
        not, e.g. a bare ``ray.init()``, runs the drivers anywhere); the workers are Ray Train's to place."""
        out = {"CPU": DRIVER_CPU}
        if cluster.get(DRIVER_RESOURCE, 0) > 0:
            out[DRIVER_RESOURCE] = DRIVER_RESOURCE_SHARE
        return out

    def need_detail(self) -> str:
        return f", plus {DRIVER_CPU} CPU for its driver"

    def tune_run_options(self) -> dict:
        """Train keeps the checkpoints and survives worker crashes; Tune only retries a failed driver."""
        from ray import tune

        return {"failure_config": tune.FailureConfig(max_failures=TUNE_MAX_FAILURES)}

    def fit(self, entry, loop: LoopConfig, *, run_name: str, storage_path: str, torch_backend: str | None):
        """One TorchTrainer run named ``run_name`` (so a restarted driver resumes it); its best checkpoint by
        BEST_BY and its latest (Train keeps it with the best ones), or None each. ``train_loop_config`` must be a dict (Ray Train's signature): the typed LoopConfig is its
        one value, pickled to each worker with the dict and read there as it is."""
        import ray.train
        from ray.train.torch import TorchConfig, TorchTrainer
        from ray.tune.integration.ray_train import TuneReportCallback

        res = loop.spec.resources
        use_gpu = res.gpus_per_worker > 0
        per_worker = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if use_gpu else {})}
        trainer = TorchTrainer(
            entry,
            # None: Ray's default, NCCL when the workers have GPUs; SIBNN_TORCH_BACKEND overrides it (gloo on a
            # cluster whose GPUs torch cannot use, e.g. the scheduling tests' fake GPUs).
            torch_config=TorchConfig(backend=torch_backend),
            train_loop_config={LOOP_KEY: loop},
            scaling_config=ray.train.ScalingConfig(num_workers=res.workers_per_trial, use_gpu=use_gpu,
                                                   resources_per_worker=per_worker),
            run_config=ray.train.RunConfig(
                name=run_name, storage_path=storage_path,
                failure_config=ray.train.FailureConfig(max_failures=TRAIN_MAX_FAILURES),
                checkpoint_config=ray.train.CheckpointConfig(**KEEP),
                callbacks=[TuneReportCallback()]),
        )
        result = trainer.fit()
        return (result.get_best_checkpoint(BEST_BY, "max") if result.best_checkpoints else None), result.checkpoint

    def session(self) -> Session:
        return _TrainWorkerSession()


class TuneRunner(Runner):
    name = "tune"

    def resources_error(self, workers_per_trial: int | None, gpus_per_worker: float | None) -> str | None:
        if workers_per_trial != 1 or gpus_per_worker != 0:
            return ("runner 'tune' trains each trial in one CPU process: it needs workers_per_trial 1 and "
                    "gpus_per_worker 0 (use runner 'train' for DDP or GPU trials)")
        return None

    def trial_cpus(self, res: ResourcesSpec) -> float:
        return res.cpus_per_worker

    def trial_request(self, res: ResourcesSpec | None, cluster: dict) -> dict:
        """The trial trains in that process: its worker's CPUs, on any node (not the head's driver resource)."""
        return {"CPU": res.cpus_per_worker}

    def need_detail(self) -> str:
        return ""

    def tune_run_options(self) -> dict:
        """The trial's process is its only worker, so Tune keeps its checkpoints (as Train would: KEEP) and retries
        it as often as Train would restart a crashed worker."""
        from ray import tune

        return {"failure_config": tune.FailureConfig(max_failures=TRAIN_MAX_FAILURES),
                "checkpoint_config": tune.CheckpointConfig(**KEEP)}

    def fit(self, entry, loop: LoopConfig, *, run_name: str, storage_path: str, torch_backend: str | None):
        """The loop in this process (the Tune trial's; no run of its own, no process group: one worker); the entry
        returns its session's best and latest checkpoints (``jobs.train_loop.train_trial``)."""
        return entry({LOOP_KEY: loop})

    def session(self) -> Session:
        return _TuneTrialSession()


# In the order the spec's error message lists them; the first is the default.
RUNNERS: dict[str, Runner] = {r.name: r for r in (TrainRunner(), TuneRunner())}
RUNNER_NAMES: tuple[str, ...] = tuple(RUNNERS)
DEFAULT_RUNNER = RUNNER_NAMES[0]


def runner_for(spec: ExperimentSpec) -> Runner:
    """The runner a spec's trials run with (the spec validated its name)."""
    return RUNNERS[spec.resources.runner]
