"""The sweep driver: a Ray Tune grid over the spec's trials, one Ray Train ``TorchTrainer`` per trial.

Tune runs a *driver function* per trial (``run_trial``) that asks for a sliver of CPU and builds the trial's
TorchTrainer; Train's ``TuneReportCallback`` forwards the workers' reports to Tune. Names are derived from the
experiment id (Tune experiment ``sibnn-<id>``, Train run ``<id>-<trial id>``) under one shared ``storage_path``,
so a restarted driver restores the Tune experiment and every unfinished Train run resumes from its last checkpoint.

The spec's ``resources.runner = "tune"`` trains each (single-worker CPU) trial in the Tune trial's own process
instead: the trial asks for its worker's CPUs, reports and checkpoints through Tune, and Tune's failure handling
resumes it. What each runner asks for, holds and keeps, and how it fits a trial, is its object in ``jobs.runners``,
chosen once from the spec; this module asks it.

The job's settings (``jobs.settings.JobSettings``: the cluster's full size, the torch backend, ...) are read once
by the entry point and travel with the sweep: in each Tune trial's arguments and in each trial's ``LoopConfig``.

Trials that need other trials (a teacher, an earlier stage of two-step training) run in waves (``spec.waves()``):
one Tune run per wave, one after the other; the first keeps the experiment's Tune name (``sibnn-<id>``), so a spec
without dependencies runs and restores as one Tune run exactly as before, and wave k > 0 is ``sibnn-<id>-wave<k>``.
A restarted driver restores each wave's run in turn: a finished wave's restore hands back its results at once, the
unfinished one resumes. A trial of a later wave looks up what it needs when it starts (``resolve_needs``): the
needed trial's MLflow run, FINISHED, and the checkpoint it tagged — the teacher's best, an earlier stage's final.
A needed trial that failed fails its dependants with an error naming it; the other trials go on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import ray
from ray import tune
from mlflow.entities import Metric

from jobs import results, tracking
# DRIVER_RESOURCE and the MAX_*_ENV names are the runners' and the settings' (the deployment tests read them here)
from jobs.runners import DEFAULT_RUNNER, DRIVER_RESOURCE, RUNNERS, runner_for  # noqa: F401
from jobs.settings import MAX_CPUS_ENV, MAX_GPUS_ENV, JobSettings
from jobs.spec import NEED_ROLES, ExperimentSpec, TrialSpec, is_external
from jobs.train_loop import CHECKPOINT_FILE, LoopConfig, train_trial
from sibnn.catalog import binarizer_info
from sibnn.trial import input_shape, model_from_checkpoint


@dataclass
class SweepOutcome:
    parent_run_id: str
    rows: list[dict]
    failed: list[str]


class InfeasibleTrialError(RuntimeError):
    """A trial asks for more than the whole cluster can ever have: Tune would wait for it forever."""


class DependencyError(RuntimeError):
    """A trial needs a trial of an earlier wave that did not finish with the checkpoint it needs."""


# Which checkpoint of a needed trial a trial gets, per role. "teacher": its best (the model one would ship; ReActNet
# distils from a pretrained ResNet-34). "init": its final one — ReActNet's step 2 loads step 1's last save
# ([code] resnet/2_step2/run.sh copies ../1_step1/models/checkpoint.pth.tar, written every epoch by
# utils.save_checkpoint, not model_best.pth.tar; train.py loads it with load_state_dict(..., strict=False)).
NEED_CHECKPOINT = {"teacher": tracking.TAG_BEST_CHECKPOINT, "init": tracking.TAG_FINAL_CHECKPOINT}
assert set(NEED_CHECKPOINT) == set(NEED_ROLES)


def resolve_needs(client, experiment_id: str, trial: TrialSpec) -> dict[str, str]:
    """role → the checkpoint URI of each trial ``trial`` needs, from that trial's MLflow run (its tag
    ``NEED_CHECKPOINT[role]``); a ``DependencyError`` naming the trial when it did not finish with one."""
    out = {}
    for role, need in trial.needs.items():
        if is_external(need):
            out[role] = external_checkpoint(client, need, trial)
            continue
        run = tracking.find_trial_run(client, experiment_id, need)
        tags = run.data.tags if run is not None else {}
        state = tags.get(tracking.TAG_STATE, run.info.status) if run is not None else "never started"
        uri = tags.get(NEED_CHECKPOINT[role])
        if state != "FINISHED" or not uri:
            why = tags.get(tracking.TAG_ERROR) or ("finished without a checkpoint" if state == "FINISHED" else "")
            raise DependencyError(f"{trial.trial_id} needs its {role} trial {need!r}, which did not finish "
                                  f"({state}{': ' + why if why else ''})")
        out[role] = uri
    return out


def external_checkpoint(client, uri: str, trial: TrialSpec) -> str:
    """The ``runs:/<run id>/checkpoint/model_state.pt`` artifact URI of a teacher trained before (``TeacherSpec
    .model_uri``): the trial run it names, or the run a registered ``models:/`` version was logged from; a
    ``DependencyError`` saying why when it is not a sibnn trial run with a checkpoint on this MLflow."""
    from mlflow.exceptions import MlflowException

    try:
        if uri.startswith("runs:/"):
            run_id = uri.removeprefix("runs:/")
        else:
            name, _, version = uri.removeprefix("models:/").partition("/")
            if version or "@" in name:  # a registered model's version or alias
                mv = (client.get_model_version(name, version) if version else
                      client.get_model_version_by_alias(*name.split("@", 1)))
                run_id = mv.run_id or client.get_logged_model(mv.model_id).source_run_id
            else:  # an MLflow 3 logged model by its id (a results row's model_uri)
                run_id = client.get_logged_model(name).source_run_id
        run = client.get_run(run_id)
    except MlflowException as e:
        raise DependencyError(f"{trial.trial_id} distils from {uri}, which this MLflow does not have: "
                              f"{e.message}") from None
    if run.data.tags.get(tracking.TAG_CHECKPOINT_ARTIFACT) != MODEL_STATE:
        raise DependencyError(f"{trial.trial_id} distils from {uri}: run {run_id} is not a sibnn trial run with a "
                              f"checkpoint artifact ({MODEL_STATE})")
    return f"runs:/{run_id}/{MODEL_STATE}"


def wave_name(experiment_id: str, wave: int) -> str:
    """The Tune run of a wave: the experiment's Tune name for the first (as before waves existed), then -wave<k>."""
    name = tracking.experiment_name(experiment_id)
    return name if wave == 0 else f"{name}-wave{wave}"


def cluster_capacity(resources: dict, settings: JobSettings | None = None) -> dict:
    """What the cluster can hold at full size: its resources now, raised to ``SIBNN_MAX_CLUSTER_GPUS`` /
    ``SIBNN_MAX_CLUSTER_CPUS`` where those say more (an autoscaling cluster whose GPU group is scaled to zero has
    no GPU at submit time, but will have them when the trials ask). ``settings``: the job's (default: this
    process's environment)."""
    s = settings or JobSettings.from_env()
    cap = {"CPU": float(resources.get("CPU", 0.0)), "GPU": float(resources.get("GPU", 0.0))}
    for key, most in (("GPU", s.max_cluster_gpus), ("CPU", s.max_cluster_cpus)):
        if most is not None:
            cap[key] = max(cap[key], most)
    return cap


def check_feasible(spec: ExperimentSpec, resources: dict, settings: JobSettings | None = None) -> None:
    """Fail fast when one trial cannot fit the cluster even at its full size (``cluster_capacity``)."""
    s = settings or JobSettings.from_env()
    r, runner = spec.resources, runner_for(spec)
    cap = cluster_capacity(resources, s)
    need_cpu = runner.trial_cpus(r)
    need_gpu = r.workers_per_trial * r.gpus_per_worker
    if need_cpu > cap["CPU"] + 1e-9 or need_gpu > cap["GPU"] + 1e-9:
        declared = [f"{env}={most:g}" for env, most in ((MAX_GPUS_ENV, s.max_cluster_gpus),
                                                        (MAX_CPUS_ENV, s.max_cluster_cpus)) if most is not None]
        grows = f" ({', '.join(declared)})" if declared else ""
        raise InfeasibleTrialError(
            f"one trial needs {need_cpu:g} CPUs and {need_gpu:g} GPUs (resources: {r.workers_per_trial} workers × "
            f"{r.cpus_per_worker:g} CPUs, {r.gpus_per_worker:g} GPUs{runner.need_detail()}), the "
            f"Ray cluster can have at most {cap['CPU']:g} CPUs and {cap['GPU']:g} GPUs{grows}; lower the resources "
            f"or add nodes (an autoscaling cluster: set {MAX_GPUS_ENV} / {MAX_CPUS_ENV} on the head to its size "
            f"at maxReplicas)")


def max_concurrent_trials(spec: ExperimentSpec, resources: dict, settings: JobSettings | None = None,
                          trials: int | None = None) -> int:
    """As many trials at once as the cluster at full size holds: its GPUs (CPUs on a CPU cluster); at most
    ``trials`` (default: the spec's)."""
    r = spec.resources
    cap = cluster_capacity(resources, settings)
    if r.gpus_per_worker > 0:
        fit = cap["GPU"] // (r.workers_per_trial * r.gpus_per_worker)
    else:
        fit = cap["CPU"] // runner_for(spec).trial_cpus(r)
    return max(1, min(int(fit), len(spec.trials()) if trials is None else trials))


def driver_resources(resources: dict, spec: ExperimentSpec | None = None) -> dict:
    """What each Tune trial asks for, as the spec's runner says (no spec: the default runner's driver)."""
    runner = runner_for(spec) if spec is not None else RUNNERS[DEFAULT_RUNNER]
    return runner.trial_request(spec.resources if spec is not None else None, resources)


def run_trial(config: dict, *, spec: ExperimentSpec, experiment_id: str, storage_path: str, mlflow_uri: str,
              parent_run_id: str, data_root: str | None, data_fingerprint: str, settings: JobSettings) -> None:
    """Tune trial function: one trial, fitted by the spec's runner (one TorchTrainer, or the training loop in this
    process), with its MLflow child run created or resumed by tag. The keyword arguments are the sweep's, pickled
    by Tune with this function; ``config`` is Tune's grid point."""
    trial = TrialSpec.model_validate(config["trial"])
    client = tracking.client(mlflow_uri)
    run_id = tracking.ensure_trial_run(client, experiment_id, parent_run_id, spec, trial)
    try:
        needs = resolve_needs(client, experiment_id, trial)  # the needed trials finished in earlier waves
        for role, uri in needs.items():
            client.set_tag(run_id, f"{tracking.TAG_NEEDS}.{role}.checkpoint", uri)
        loop = LoopConfig(spec=spec, trial=trial, experiment_id=experiment_id, mlflow_uri=mlflow_uri,
                          mlflow_run_id=run_id, data_root=data_root, data_fingerprint=data_fingerprint,
                          settings=settings, needs=needs)
        best, final = loop.runner.fit(train_trial, loop, run_name=f"{experiment_id}-{trial.trial_id}",
                                      storage_path=storage_path, torch_backend=settings.torch_backend)
    except Exception as e:  # TrainingFailedError, DependencyError and friends: the run says why, the sweep goes on
        client.set_tag(run_id, tracking.TAG_ERROR, f"{type(e).__name__}: {e}"[:5000])
        tracking.set_trial_state(client, run_id, "FAILED")
        raise
    finish_trial(client, run_id, best, spec, trial, final=final)


def finish_trial(client, run_id: str, best, spec: ExperimentSpec, trial: TrialSpec, final=None) -> None:
    """Final metrics, the best and the final checkpoints' (Ray Checkpoints, or None) locations and the model summary
    on the trial's run."""
    import torch

    from sibnn.summary import summarize

    hist = {m.step: m.value for m in client.get_metric_history(run_id, "val_top1")}
    hist5 = {m.step: m.value for m in client.get_metric_history(run_id, "val_top5")}
    secs = client.get_metric_history(run_id, "epoch_seconds")
    last = max(hist) if hist else None
    metrics = {"best_val_top1": max(hist.values()), "best_val_top5": max(hist5.values()),
               "final_val_top1": hist[last], "final_val_top5": hist5[last],
               "wall_time_s": sum(m.value for m in secs)} if hist else {}
    if final is not None:
        client.set_tag(run_id, tracking.TAG_FINAL_CHECKPOINT, checkpoint_uri(final))
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
        metrics.update(packed_bytes=summary.totals["packed_bytes"], fp32_bytes=summary.totals["fp32_bytes"])
        # a real-weights stage is not a binary model yet: packing would binarize its weights
        if binarizer_info(trial.binarizer).packable and trial.weights != "real":
            metrics.update(_export_packed(client, run_id, model, cfg, shape))
    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()])
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
    """The best finished trial per (arch, binarizer) as an MLflow model, registered as ``sibnn-<arch>-<binarizer>``
    with its signature; returns the model URIs. A rerun keeps what is already logged.

    The trial's run is finished by now and stays as it ended: the model is an MLflow 3 logged model whose source is
    that run (``initialize_logged_model(source_run_id=...)``, then listed in the run's outputs), not a model logged
    inside a resumed run — ``start_run(run_id=...)`` would reopen the run and end it again, moving its end time to
    the end of the sweep."""
    import tempfile

    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.entities import LoggedModelOutput

    import sibnn

    best: dict[tuple[str, str], dict] = {}
    for r in rows:
        # an earlier step of two-step training is not a final model
        if r["state"] == "FINISHED" and r["best_top1"] is not None and r["checkpoint_uri"] \
                and not results.is_intermediate(r):
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
        run = client.get_run(r["run_id"])
        logged = mlflow.initialize_logged_model(name="model", source_run_id=run.info.run_id,
                                                experiment_id=run.info.experiment_id, params=run.data.params)
        info = mlflow.pytorch.log_model(
            model, name="model", model_id=logged.model_id, registered_model_name=f"sibnn-{arch}-{binarizer}",
            signature=model_signature(model, ckpt["config"]),
            # pickle, not MLflow's default pt2: torch.export traces the input example's batch size into the
            # graph (a model exported at batch 1 refuses batch 5), and every use here evaluates batches.
            serialization_format="pickle",
            code_paths=[str(Path(sibnn.__file__).parent)],  # the model's classes, to load it elsewhere
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"])
        client.log_outputs(run.info.run_id, models=[LoggedModelOutput(logged.model_id, step=0)])
        client.set_tag(r["run_id"], tracking.TAG_MODEL_URI, info.model_uri)
        out[(arch, binarizer)] = info.model_uri
    return out


SIGNATURE_BATCH = 2  # the batch the signature is inferred from; its batch axis is variable (-1) either way


def model_signature(model, config: dict):
    """The MLflow signature of a trained model: a float32 tensor of the trial's input shape (any batch) → its
    logits, inferred from the model's own output on a small seeded batch of normalised inputs."""
    import torch
    from mlflow.models import infer_signature

    x = torch.randn((SIGNATURE_BATCH, *input_shape(config)), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model.eval()(x)
    return infer_signature(x.numpy(), y.numpy())


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
              data_root: str | None, data_fingerprint: str, callbacks: list | None = None,
              settings: JobSettings | None = None) -> SweepOutcome:
    """``callbacks``: Tune callbacks of a new sweep (observers, e.g. the scheduling tests'). ``settings``: the
    job's, as its entry point read them (default: this process's environment, read here once)."""
    settings = settings or JobSettings.from_env()
    runner = runner_for(spec)
    resources = ray.cluster_resources()
    check_feasible(spec, resources, settings)
    client = tracking.client(mlflow_uri)
    parent = tracking.ensure_parent_run(client, experiment_id, spec)
    client.update_run(parent, status="RUNNING")
    driver = partial(run_trial, spec=spec, experiment_id=experiment_id, storage_path=storage_path,
                     mlflow_uri=mlflow_uri, parent_run_id=parent, data_root=data_root,
                     data_fingerprint=data_fingerprint, settings=settings)
    trainable = tune.with_resources(driver, driver_resources(resources, spec))
    failed = []
    for k, wave in enumerate(spec.waves()):  # a wave needs only the waves before it: one Tune run after the other
        name = wave_name(experiment_id, k)
        # A string join, not Path: storage_path may be a URI (s3://bucket/runs), which Path folds to s3:/bucket/runs.
        path = f"{storage_path.rstrip('/')}/{name}"
        if tune.Tuner.can_restore(path):
            # A restarted driver: finished trials stay finished (a finished wave's restore returns its results),
            # unfinished ones resume (Train resumes by run name).
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"trial": tune.grid_search([t.model_dump() for t in wave])},
                # reuse_actors: a finished trial's driver-function actor runs the next trial (Tune's reset_config),
                # instead of a new process importing torch, Ray Train and MLflow again; every trial asks for the
                # same resources, so any slot fits any trial.
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=max_concurrent_trials(spec, resources, settings, trials=len(wave)),
                    reuse_actors=True, trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
                run_config=tune.RunConfig(name=name, storage_path=storage_path, callbacks=callbacks,
                                          **runner.tune_run_options()),
            )
        grid = tuner.fit()
        failed += [r.config["trial"]["trial_id"] for r in grid if r.error is not None]
    failed.sort()
    rows = tracking.results(client, experiment_id)
    if log_best_models(client, mlflow_uri, rows):
        rows = tracking.results(client, experiment_id)  # with the model URIs
    from jobs.report import log_sweep_report

    log_sweep_report(client, parent, experiment_id, spec, rows)
    tracking.set_trial_state(client, parent, "FAILED" if failed else "FINISHED")
    return SweepOutcome(parent, rows, failed)


def _trial_name(trial) -> str:
    return trial.config["trial"]["trial_id"]
