"""The sweep driver: a Ray Tune grid over the spec's trials, one Ray Train ``TorchTrainer`` per trial.

Tune runs a *driver function* per trial (``run_trial``) that asks for a sliver of CPU and builds the trial's
TorchTrainer; Train's ``TuneReportCallback`` forwards the workers' reports to Tune. Names are derived from the
experiment id (Tune experiment ``sibnn-<id>``, Train run ``<id>-<trial id>``) under one shared ``storage_path``,
so a restarted driver restores the Tune experiment and every unfinished Train run resumes from its last checkpoint.
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
from ray.train.torch import TorchTrainer
from mlflow.entities import Metric
from ray.tune.integration.ray_train import TuneReportCallback

from jobs import tracking
from jobs.spec import ExperimentSpec, TrialSpec
from jobs.train_loop import CHECKPOINT_FILE, train_loop_per_worker

DRIVER_CPU = 0.01  # a Tune driver function only waits on its trainer; a whole CPU each would deadlock small boxes
TRAIN_MAX_FAILURES = 2  # worker crashes a trial survives (it resumes from its last checkpoint)
TUNE_MAX_FAILURES = 1   # driver-function failures Tune retries


@dataclass
class SweepOutcome:
    parent_run_id: str
    rows: list[dict]
    failed: list[str]


class InfeasibleTrialError(RuntimeError):
    """A trial asks for more than the whole cluster has: Tune would wait for it forever."""


def check_feasible(spec: ExperimentSpec, resources: dict) -> None:
    """Fail fast when one trial cannot fit the cluster. Autoscaling clusters (KubeRay with GPU workers scaled to
    zero) set SIBNN_ALLOW_PENDING_RESOURCES=1 on the head: their resources appear once a trial asks for them."""
    if os.environ.get("SIBNN_ALLOW_PENDING_RESOURCES") == "1":
        return
    r = spec.resources
    need_cpu = r.workers_per_trial * r.cpus_per_worker + DRIVER_CPU
    need_gpu = r.workers_per_trial * r.gpus_per_worker
    have_cpu, have_gpu = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if need_cpu > have_cpu + 1e-9 or need_gpu > have_gpu + 1e-9:
        raise InfeasibleTrialError(
            f"one trial needs {need_cpu:g} CPUs and {need_gpu:g} GPUs (resources: {r.workers_per_trial} workers × "
            f"{r.cpus_per_worker:g} CPUs, {r.gpus_per_worker:g} GPUs, plus {DRIVER_CPU} CPU for its driver), the "
            f"Ray cluster has {have_cpu:g} CPUs and {have_gpu:g} GPUs; lower the resources or add nodes "
            f"(set SIBNN_ALLOW_PENDING_RESOURCES=1 on an autoscaling cluster)")


def max_concurrent_trials(spec: ExperimentSpec, resources: dict) -> int:
    """As many trials at once as the cluster's GPUs (CPUs on a CPU cluster) hold."""
    r = spec.resources
    if r.gpus_per_worker > 0:
        fit = resources.get("GPU", 0) // (r.workers_per_trial * r.gpus_per_worker)
    else:
        fit = resources.get("CPU", 0) // (r.workers_per_trial * r.cpus_per_worker + DRIVER_CPU)
    return max(1, min(int(fit), len(spec.trials())))


def run_trial(config: dict, *, spec_json: str, experiment_id: str, storage_path: str, mlflow_uri: str,
              parent_run_id: str, data_root: str | None, data_fingerprint: str) -> None:
    """Tune driver function: one trial = one TorchTrainer, with its MLflow child run created or resumed by tag."""
    spec = ExperimentSpec.model_validate_json(spec_json)
    trial = TrialSpec.model_validate(config["trial"])
    client = tracking.client(mlflow_uri)
    run_id = tracking.ensure_trial_run(client, experiment_id, parent_run_id, spec, trial)
    res = spec.resources
    use_gpu = res.gpus_per_worker > 0
    per_worker = {"CPU": res.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = res.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec.model_dump(mode="json"), "trial": trial.model_dump(),
                           "mlflow_uri": mlflow_uri, "mlflow_run_id": run_id, "data_root": data_root,
                           "data_fingerprint": data_fingerprint},
        scaling_config=ray.train.ScalingConfig(num_workers=res.workers_per_trial, use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=f"{experiment_id}-{trial.trial_id}", storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=TRAIN_MAX_FAILURES),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_top1",
                                                         checkpoint_score_order="max"),
            callbacks=[TuneReportCallback()]),
    )
    try:
        result = trainer.fit()
    except Exception as e:  # TrainingFailedError and friends: the trial's run says why, the sweep goes on
        client.set_tag(run_id, "sibnn.error", f"{type(e).__name__}: {e}"[:5000])
        tracking.set_trial_state(client, run_id, "FAILED")
        raise
    finish_trial(client, run_id, result, spec, trial)


def finish_trial(client, run_id: str, result, spec: ExperimentSpec, trial: TrialSpec) -> None:
    """Final metrics, the best checkpoint's location and the model summary on the trial's run."""
    import torch

    from sibnn.models import create_model
    from sibnn.summary import summarize

    hist = {m.step: m.value for m in client.get_metric_history(run_id, "val_top1")}
    hist5 = {m.step: m.value for m in client.get_metric_history(run_id, "val_top5")}
    secs = client.get_metric_history(run_id, "epoch_seconds")
    last = max(hist) if hist else None
    final = {"best_val_top1": max(hist.values()), "best_val_top5": max(hist5.values()),
             "final_val_top1": hist[last], "final_val_top5": hist5[last],
             "wall_time_s": sum(m.value for m in secs)} if hist else {}
    best = max(result.best_checkpoints, key=lambda cm: cm[1].get("val_top1", -math.inf), default=None)
    if best is not None:
        client.set_tag(run_id, tracking.TAG_BEST_CHECKPOINT, best[0].path)
        with best[0].as_directory() as d:
            ckpt = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
        cfg = ckpt["config"]
        kw = {k: v for k, v in cfg.items() if k in ("in_channels", "input_size")}
        model = create_model(trial.arch, trial.binarizer, trial.rho if trial.rho is not None else 0.3,
                             cfg["num_classes"], **kw)
        model.load_state_dict(ckpt["model"])
        size = _input_size(spec, trial)
        summary = summarize(model, (1, cfg.get("in_channels", 3), size, size))
        client.log_text(run_id, str(summary), "model_summary.txt")
        client.log_dict(run_id, summary.to_dict(), "model_summary.json")
        final.update(packed_bytes=summary.totals["packed_bytes"], fp32_bytes=summary.totals["fp32_bytes"])
        if trial.binarizer == "sibnn":
            final.update(_export_packed(client, run_id, model.eval(), cfg, (1, cfg.get("in_channels", 3), size, size)))
    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in final.items()])
    tracking.set_trial_state(client, run_id, "FINISHED")


def _export_packed(client, run_id: str, model, cfg: dict, input_shape: tuple) -> dict:
    """The best checkpoint as a bit-packed CPU model (sibnn.infer, int8 FP layers): the file goes to the trial's
    run, with its size and its median batch-1 latency on this CPU."""
    import tempfile

    import torch

    from sibnn.infer import pack_model
    from sibnn.infer.runtime import median_latency

    packed = pack_model(model, cfg, fp_dtype="int8")
    latency = median_latency(packed, torch.randn(input_shape), repeats=5)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.sibnn"
        size = packed.save(path)
        client.log_artifact(run_id, str(path))
    return {"packed_file_bytes": size, "packed_latency_ms": 1e3 * latency}


def _input_size(spec: ExperimentSpec, trial: TrialSpec) -> int:
    from sibnn.models import model_info

    small = {"digits": 8, "mnist": 28, "mnist5k": 28, "cifar10": 32}
    return small.get(spec.dataset.kind) or spec.dataset.image_size or model_info(trial.arch).input_size


def run_sweep(spec: ExperimentSpec, experiment_id: str, *, storage_path: str, mlflow_uri: str,
              data_root: str | None, data_fingerprint: str) -> SweepOutcome:
    check_feasible(spec, ray.cluster_resources())
    client = tracking.client(mlflow_uri)
    parent = tracking.ensure_parent_run(client, experiment_id, spec)
    client.update_run(parent, status="RUNNING")
    trials = spec.trials()
    driver = partial(run_trial, spec_json=spec.model_dump_json(), experiment_id=experiment_id,
                     storage_path=storage_path, mlflow_uri=mlflow_uri, parent_run_id=parent, data_root=data_root,
                     data_fingerprint=data_fingerprint)
    trainable = tune.with_resources(driver, {"cpu": DRIVER_CPU})
    name = tracking.experiment_name(experiment_id)
    path = str(Path(storage_path) / name)
    if tune.Tuner.can_restore(path):
        # A restarted driver: finished trials stay finished, unfinished ones resume (Train resumes by run name).
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search([t.model_dump() for t in trials])},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent_trials(spec, ray.cluster_resources()),
                                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(name=name, storage_path=storage_path,
                                      failure_config=tune.FailureConfig(max_failures=TUNE_MAX_FAILURES)),
        )
    grid = tuner.fit()
    failed = sorted(r.config["trial"]["trial_id"] for r in grid if r.error is not None)
    rows = tracking.results(client, experiment_id)
    from jobs.report import log_sweep_report

    log_sweep_report(client, parent, experiment_id, spec, rows)
    tracking.set_trial_state(client, parent, "FAILED" if failed else "FINISHED")
    return SweepOutcome(parent, rows, failed)


def _trial_name(trial) -> str:
    return trial.config["trial"]["trial_id"]
