"""The sweep driver: a Ray Tune grid over the spec's trials, one Ray Train ``TorchTrainer`` per trial.

Tune runs a *driver function* per trial (``run_trial``) that asks for a sliver of CPU and builds the trial's
TorchTrainer; Train's ``TuneReportCallback`` forwards the workers' reports to Tune. Names are derived from the
experiment id (Tune experiment ``sibnn-<id>``, Train run ``<id>-<trial id>``) under one shared ``storage_path``,
so a restarted driver restores the Tune experiment and every unfinished Train run resumes from its last checkpoint.

The spec's ``resources.runner = "tune"`` trains each (single-worker CPU) trial in the Tune trial's own process
instead: the trial asks for its worker's CPUs, reports and checkpoints through Tune, and Tune's failure handling
resumes it. No Ray Train actors are started: for a small model on a small machine their start-up (six processes
per trial) costs more than the training (docs/demo.md).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import ray
import ray.train
from ray import tune
from ray.train.torch import TorchConfig, TorchTrainer
from mlflow.entities import Metric
from ray.tune.integration.ray_train import TuneReportCallback

from jobs import tracking
from jobs.spec import ExperimentSpec, TrialSpec
from jobs.train_loop import CHECKPOINT_FILE, train_in_tune_trial, train_loop_per_worker
from sibnn.catalog import binarizer_info
from sibnn.trial import input_shape, model_from_checkpoint

DRIVER_CPU = 0.01  # a Tune driver function only waits on its trainer; a whole CPU each would deadlock small boxes
# Ray's Tune-over-Train guide: driver functions run on a "safe" node that declares a custom resource (the head in
# compose, KubeRay and the embedded stack: `--resources '{"TRAIN_DRIVER_RESOURCE": 1}'`), never on the GPU nodes
# they would keep from scaling down. A sliver each: up to 100 drivers on the head.
DRIVER_RESOURCE = "TRAIN_DRIVER_RESOURCE"
DRIVER_RESOURCE_SHARE = 0.01
# The cluster at full size when it autoscales (KubeRay: maxReplicas × GPUs per worker pod); read from the head's
# environment. Unset: the cluster is what it is now.
MAX_GPUS_ENV, MAX_CPUS_ENV = "SIBNN_MAX_CLUSTER_GPUS", "SIBNN_MAX_CLUSTER_CPUS"
TORCH_BACKEND_ENV = "SIBNN_TORCH_BACKEND"
TRAIN_MAX_FAILURES = 2  # worker crashes a trial survives (it resumes from its last checkpoint)
TUNE_MAX_FAILURES = 1   # driver-function failures Tune retries


@dataclass
class SweepOutcome:
    parent_run_id: str
    rows: list[dict]
    failed: list[str]


class InfeasibleTrialError(RuntimeError):
    """A trial asks for more than the whole cluster can ever have: Tune would wait for it forever."""


def _env_amount(name: str) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: not a number") from None
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"{name}={raw!r}: must be a number >= 0")
    return value


def cluster_capacity(resources: dict) -> dict:
    """What the cluster can hold at full size: its resources now, raised to ``SIBNN_MAX_CLUSTER_GPUS`` /
    ``SIBNN_MAX_CLUSTER_CPUS`` where those say more (an autoscaling cluster whose GPU group is scaled to zero has
    no GPU at submit time, but will have them when the trials ask)."""
    cap = {"CPU": float(resources.get("CPU", 0.0)), "GPU": float(resources.get("GPU", 0.0))}
    for key, env in (("GPU", MAX_GPUS_ENV), ("CPU", MAX_CPUS_ENV)):
        most = _env_amount(env)
        if most is not None:
            cap[key] = max(cap[key], most)
    return cap


def _trial_cpus(spec: ExperimentSpec) -> float:
    """CPUs one trial holds: its workers' and its driver's sliver (runner "train"), or its one process's."""
    r = spec.resources
    return r.cpus_per_worker if r.runner == "tune" else r.workers_per_trial * r.cpus_per_worker + DRIVER_CPU


def check_feasible(spec: ExperimentSpec, resources: dict) -> None:
    """Fail fast when one trial cannot fit the cluster even at its full size (``cluster_capacity``)."""
    r = spec.resources
    cap = cluster_capacity(resources)
    need_cpu = _trial_cpus(spec)
    need_gpu = r.workers_per_trial * r.gpus_per_worker
    if need_cpu > cap["CPU"] + 1e-9 or need_gpu > cap["GPU"] + 1e-9:
        grows = (f" ({MAX_GPUS_ENV}={os.environ.get(MAX_GPUS_ENV)}, {MAX_CPUS_ENV}={os.environ.get(MAX_CPUS_ENV)})"
                 if os.environ.get(MAX_GPUS_ENV) or os.environ.get(MAX_CPUS_ENV) else "")
        raise InfeasibleTrialError(
            f"one trial needs {need_cpu:g} CPUs and {need_gpu:g} GPUs (resources: {r.workers_per_trial} workers × "
            f"{r.cpus_per_worker:g} CPUs, {r.gpus_per_worker:g} GPUs"
            f"{'' if r.runner == 'tune' else f', plus {DRIVER_CPU} CPU for its driver'}), the "
            f"Ray cluster can have at most {cap['CPU']:g} CPUs and {cap['GPU']:g} GPUs{grows}; lower the resources "
            f"or add nodes (an autoscaling cluster: set {MAX_GPUS_ENV} / {MAX_CPUS_ENV} on the head to its size "
            f"at maxReplicas)")


def max_concurrent_trials(spec: ExperimentSpec, resources: dict) -> int:
    """As many trials at once as the cluster at full size holds: its GPUs (CPUs on a CPU cluster)."""
    r = spec.resources
    cap = cluster_capacity(resources)
    if r.gpus_per_worker > 0:
        fit = cap["GPU"] // (r.workers_per_trial * r.gpus_per_worker)
    else:
        fit = cap["CPU"] // _trial_cpus(spec)
    return max(1, min(int(fit), len(spec.trials())))


def driver_resources(resources: dict, spec: ExperimentSpec | None = None) -> dict:
    """What each Tune driver function asks for: a sliver of CPU, and of the head's driver resource when the
    cluster declares it (a cluster that does not, e.g. a bare ``ray.init()``, runs the drivers anywhere). A trial
    of runner "tune" trains in that process: it asks for its worker's CPUs, on any node."""
    if spec is not None and spec.resources.runner == "tune":
        return {"CPU": spec.resources.cpus_per_worker}
    out = {"CPU": DRIVER_CPU}
    if resources.get(DRIVER_RESOURCE, 0) > 0:
        out[DRIVER_RESOURCE] = DRIVER_RESOURCE_SHARE
    return out


def run_trial(config: dict, *, spec_json: str, experiment_id: str, storage_path: str, mlflow_uri: str,
              parent_run_id: str, data_root: str | None, data_fingerprint: str) -> None:
    """Tune driver function: one trial = one TorchTrainer (or, runner "tune", the training loop in this process),
    with its MLflow child run created or resumed by tag."""
    spec = ExperimentSpec.model_validate_json(spec_json)
    trial = TrialSpec.model_validate(config["trial"])
    client = tracking.client(mlflow_uri)
    run_id = tracking.ensure_trial_run(client, experiment_id, parent_run_id, spec, trial)
    loop_config = {"spec": spec.model_dump(mode="json"), "trial": trial.model_dump(), "mlflow_uri": mlflow_uri,
                   "mlflow_run_id": run_id, "data_root": data_root, "data_fingerprint": data_fingerprint}
    try:
        if spec.resources.runner == "tune":
            best = train_in_tune_trial(loop_config)
        else:
            best = _fit_ray_train(loop_config, spec, trial, experiment_id, storage_path)
    except Exception as e:  # TrainingFailedError and friends: the trial's run says why, the sweep goes on
        client.set_tag(run_id, "sibnn.error", f"{type(e).__name__}: {e}"[:5000])
        tracking.set_trial_state(client, run_id, "FAILED")
        raise
    finish_trial(client, run_id, best, spec, trial)


def _fit_ray_train(loop_config: dict, spec: ExperimentSpec, trial: TrialSpec, experiment_id: str,
                   storage_path: str):
    """Runner "train": the trial as one TorchTrainer run; returns its best checkpoint by val_top1 (or None)."""
    res = spec.resources
    use_gpu = res.gpus_per_worker > 0
    per_worker = {"CPU": res.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = res.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        # Ray's default: NCCL when the workers have GPUs; SIBNN_TORCH_BACKEND overrides it (gloo on a cluster
        # whose GPUs torch cannot use, e.g. the scheduling tests' fake GPUs).
        torch_config=TorchConfig(backend=os.environ.get(TORCH_BACKEND_ENV) or None),
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=res.workers_per_trial, use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=f"{experiment_id}-{trial.trial_id}", storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=TRAIN_MAX_FAILURES),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_top1",
                                                         checkpoint_score_order="max"),
            callbacks=[TuneReportCallback()]),
    )
    result = trainer.fit()
    return result.get_best_checkpoint("val_top1", "max") if result.best_checkpoints else None


def finish_trial(client, run_id: str, best, spec: ExperimentSpec, trial: TrialSpec) -> None:
    """Final metrics, the best checkpoint's (a Ray Checkpoint, or None) location and the model summary on the
    trial's run."""
    import torch

    from sibnn.summary import summarize

    hist = {m.step: m.value for m in client.get_metric_history(run_id, "val_top1")}
    hist5 = {m.step: m.value for m in client.get_metric_history(run_id, "val_top5")}
    secs = client.get_metric_history(run_id, "epoch_seconds")
    last = max(hist) if hist else None
    final = {"best_val_top1": max(hist.values()), "best_val_top5": max(hist5.values()),
             "final_val_top1": hist[last], "final_val_top5": hist5[last],
             "wall_time_s": sum(m.value for m in secs)} if hist else {}
    if best is not None:
        client.set_tag(run_id, tracking.TAG_BEST_CHECKPOINT, checkpoint_uri(best))
        with best.as_directory() as d:  # a local folder, downloaded when the storage is an object store
            ckpt = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
        cfg = ckpt["config"]
        model = model_from_checkpoint(ckpt)
        _log_checkpoint(client, run_id, ckpt)
        shape = (1, *input_shape(cfg))  # as the trial trained it
        summary = summarize(model, shape)
        client.log_text(run_id, str(summary), "model_summary.txt")
        client.log_dict(run_id, summary.to_dict(), "model_summary.json")
        final.update(packed_bytes=summary.totals["packed_bytes"], fp32_bytes=summary.totals["fp32_bytes"])
        if binarizer_info(trial.binarizer).packable:
            final.update(_export_packed(client, run_id, model, cfg, shape))
    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in final.items()])
    tracking.set_trial_state(client, run_id, "FINISHED")


MODEL_STATE = "checkpoint/model_state.pt"  # the trial run's artifact: {"model": state dict, "config": ...}


def _log_checkpoint(client, run_id: str, ckpt: dict) -> None:
    """The best checkpoint's weights and config (no optimiser state) as the trial run's artifacts, so the model
    can be downloaded from MLflow (UI, `sibnn download`) without access to Ray's storage."""
    import json
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as d:
        folder, name = MODEL_STATE.split("/")
        torch.save({"model": ckpt["model"], "config": ckpt["config"]}, Path(d) / name)
        (Path(d) / "config.json").write_text(json.dumps(ckpt["config"], indent=1, default=str))
        client.log_artifacts(run_id, d, folder)
    client.set_tag(run_id, tracking.TAG_CHECKPOINT_ARTIFACT, MODEL_STATE)


def log_best_models(client, mlflow_uri: str, rows: list[dict]) -> dict[tuple[str, str], str]:
    """The best finished trial per (arch, binarizer) as an MLflow model (``mlflow.pytorch.log_model`` on its run),
    registered as ``sibnn-<arch>-<binarizer>``; returns the model URIs. A rerun keeps what is already logged."""
    import tempfile

    import mlflow
    import mlflow.pytorch
    import torch

    import sibnn

    best: dict[tuple[str, str], dict] = {}
    for r in rows:
        if r["state"] == "FINISHED" and r["best_top1"] is not None and r["checkpoint_uri"]:
            key = (r["arch"], r["binarizer"])
            if key not in best or r["best_top1"] > best[key]["best_top1"]:
                best[key] = r
    mlflow.set_tracking_uri(mlflow_uri)
    out = {}
    for (arch, binarizer), r in sorted(best.items()):
        if r["model_uri"]:
            out[(arch, binarizer)] = r["model_uri"]
            continue
        with tempfile.TemporaryDirectory() as d:
            ckpt = torch.load(client.download_artifacts(r["run_id"], MODEL_STATE, d), map_location="cpu",
                              weights_only=False)
        model = model_from_checkpoint(ckpt)
        with mlflow.start_run(run_id=r["run_id"]):
            info = mlflow.pytorch.log_model(
                model, name="model", registered_model_name=f"sibnn-{arch}-{binarizer}",
                # pickle, not MLflow's default pt2: torch.export traces the input example's batch size into the
                # graph (a model exported at batch 1 refuses batch 5), and every use here evaluates batches.
                serialization_format="pickle",
                code_paths=[str(Path(sibnn.__file__).parent)],  # the model's classes, to load it elsewhere
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"])
        client.set_tag(r["run_id"], tracking.TAG_MODEL_URI, info.model_uri)
        out[(arch, binarizer)] = info.model_uri
    return out


def checkpoint_uri(checkpoint) -> str:
    """Where a Ray checkpoint lives, as a URI another process can open: pyarrow's paths drop the scheme."""
    scheme = {"s3": "s3://", "gcs": "gs://"}.get(checkpoint.filesystem.type_name)
    return f"{scheme}{checkpoint.path}" if scheme else checkpoint.path


def _export_packed(client, run_id: str, model, cfg: dict, shape: tuple) -> dict:
    """The best checkpoint as a bit-packed CPU model (sibnn.infer, int8 FP layers): the file goes to the trial's
    run, with its size and its median batch-1 latency on this CPU."""
    import tempfile

    import torch

    from sibnn.infer import pack_model
    from sibnn.infer.runtime import median_latency

    packed = pack_model(model, cfg, fp_dtype="int8")
    latency = median_latency(packed, torch.randn(shape), repeats=5)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.sibnn"
        size = packed.save(path)
        client.log_artifact(run_id, str(path))
    client.set_tag(run_id, tracking.TAG_PACKED_ARTIFACT, "model.sibnn")
    return {"packed_file_bytes": size, "packed_latency_ms": 1e3 * latency}


def run_sweep(spec: ExperimentSpec, experiment_id: str, *, storage_path: str, mlflow_uri: str,
              data_root: str | None, data_fingerprint: str, callbacks: list | None = None) -> SweepOutcome:
    """``callbacks``: Tune callbacks of a new sweep (observers, e.g. the scheduling tests')."""
    resources = ray.cluster_resources()
    check_feasible(spec, resources)
    client = tracking.client(mlflow_uri)
    parent = tracking.ensure_parent_run(client, experiment_id, spec)
    client.update_run(parent, status="RUNNING")
    trials = spec.trials()
    driver = partial(run_trial, spec_json=spec.model_dump_json(), experiment_id=experiment_id,
                     storage_path=storage_path, mlflow_uri=mlflow_uri, parent_run_id=parent, data_root=data_root,
                     data_fingerprint=data_fingerprint)
    trainable = tune.with_resources(driver, driver_resources(resources, spec))
    name = tracking.experiment_name(experiment_id)
    # A string join, not Path: storage_path may be a URI (s3://bucket/runs), which Path folds to s3:/bucket/runs.
    path = f"{storage_path.rstrip('/')}/{name}"
    if tune.Tuner.can_restore(path):
        # A restarted driver: finished trials stay finished, unfinished ones resume (Train resumes by run name).
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search([t.model_dump() for t in trials])},
            # reuse_actors: a finished trial's driver-function actor runs the next trial (Tune's reset_config),
            # instead of a new process importing torch, Ray Train and MLflow again; every trial asks for the same
            # resources, so any slot fits any trial.
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent_trials(spec, resources),
                                        reuse_actors=True,
                                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(name=name, storage_path=storage_path, callbacks=callbacks,
                                      **_tune_checkpointing(spec)),
        )
    grid = tuner.fit()
    failed = sorted(r.config["trial"]["trial_id"] for r in grid if r.error is not None)
    rows = tracking.results(client, experiment_id)
    if log_best_models(client, mlflow_uri, rows):
        rows = tracking.results(client, experiment_id)  # with the model URIs
    from jobs.report import log_sweep_report

    log_sweep_report(client, parent, experiment_id, spec, rows)
    tracking.set_trial_state(client, parent, "FAILED" if failed else "FINISHED")
    return SweepOutcome(parent, rows, failed)


def _tune_checkpointing(spec: ExperimentSpec) -> dict:
    """Runner "train": Train keeps the checkpoints and survives worker crashes; Tune retries a failed driver.
    Runner "tune": the trial's process is its only worker, so Tune keeps its checkpoints (as Train would: the two
    best by val_top1, and the latest) and retries it as often as Train would restart a crashed worker."""
    if spec.resources.runner == "train":
        return {"failure_config": tune.FailureConfig(max_failures=TUNE_MAX_FAILURES)}
    return {"failure_config": tune.FailureConfig(max_failures=TRAIN_MAX_FAILURES),
            "checkpoint_config": tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_top1",
                                                       checkpoint_score_order="max")}


def _trial_name(trial) -> str:
    return trial.config["trial"]["trial_id"]
