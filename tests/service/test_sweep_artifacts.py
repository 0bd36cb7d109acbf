"""What a sweep leaves in MLflow for the UI and for readers: each trial run names its dataset as an MLflow input,
and the parent run carries the results as an MLflow table (``MlflowClient.load_table``), as CSV, and two figures.

A local MLflow store (SQLite, artifacts in a temp folder; no server), laid out by the same ``jobs`` functions the
sweep calls (tests/jobs/test_sweep.py runs them inside a real sweep)."""
import time
import uuid

import mlflow
import pytest
from mlflow.entities import Metric

from jobs import tracking
from jobs.presets import preset
from jobs.report import CSV_COLUMNS, log_sweep_report


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = tracking.client(uri)
    exp_id = uuid.uuid4().hex[:12]
    # the MLflow experiment made first, with its artifacts in tmp_path (ensure_experiment then finds it by name)
    c.create_experiment(tracking.experiment_name(exp_id), artifact_location=(tmp_path / "artifacts").as_uri())
    return uri, c, exp_id


def _finished_trials(c, exp_id, spec):
    parent = tracking.ensure_parent_run(c, exp_id, spec)
    for i, t in enumerate(spec.trials()):
        run = tracking.ensure_trial_run(c, exp_id, parent, spec, t)
        for epoch in (1, 2):
            tracking.log_epoch(c, run, epoch, {"epoch": epoch, "val_top1": 60.0 + i + epoch, "train_loss": 1 / epoch})
        c.log_batch(run, metrics=[Metric("final_val_top1", 62.0 + i, int(time.time() * 1000), 0)])
        tracking.set_trial_state(c, run, "FINISHED")
    return parent


def test_each_trial_run_names_its_dataset_as_an_input_without_reading_it(store, tmp_path):
    _, c, exp_id = store
    root = tmp_path / "synth"  # never created: the input is metadata only
    spec = preset("digits", dataset={"kind": "synthetic", "root": str(root), "policy": "rrc", "image_size": 32},
                  grid={"binarizer": ["sibnn", "sign"], "rho": [0.3], "seed": [0]})
    _finished_trials(c, exp_id, spec)
    runs = tracking.trial_runs(c, exp_id)
    assert len(runs) == 2 and not root.exists()
    digests = set()
    for run in runs:
        (inp,) = run.inputs.dataset_inputs
        ds = inp.dataset
        assert ds.name == "synthetic" and ds.source_type == "local" and str(root) in ds.source
        assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "train+val"
        digests.add(ds.digest)
    assert len(digests) == 1, "one dataset section, one digest"
    # a different dataset section (another crop size) is another digest; a packaged dataset names its loader
    other = tracking.dataset_input(spec.model_copy(update={"dataset": spec.dataset.model_copy(
        update={"image_size": 64})}))
    assert other.dataset.digest not in digests
    digits = tracking.dataset_input(preset("digits")).dataset
    assert digits.name == "digits" and digits.source_type == "code" and "load_digits" in digits.source


def test_a_resumed_trial_run_is_not_given_its_input_twice(store):
    _, c, exp_id = store
    spec = preset("digits", grid={"binarizer": ["sibnn"], "rho": [0.3], "seed": [0]})
    parent = tracking.ensure_parent_run(c, exp_id, spec)
    (trial,) = spec.trials()
    first = tracking.ensure_trial_run(c, exp_id, parent, spec, trial)
    again = tracking.ensure_trial_run(c, exp_id, parent, spec, trial)
    assert again == first and len(c.get_run(first).inputs.dataset_inputs) == 1


def test_the_sweep_report_is_an_mlflow_table_a_csv_and_two_figures(store):
    uri, c, exp_id = store
    spec = preset("digits", grid={"binarizer": ["sibnn", "sign"], "rho": [0.3], "seed": [0, 1]})
    parent = _finished_trials(c, exp_id, spec)
    rows = tracking.results(c, exp_id)
    log_sweep_report(c, parent, exp_id, spec, rows)
    artifacts = {a.path: a.file_size for a in c.list_artifacts(parent)}
    assert {"results.json", "results.csv", "accuracy_vs_rho.png", "training_curves.png"} <= set(artifacts)
    assert artifacts["accuracy_vs_rho.png"] > 1000 and artifacts["training_curves.png"] > 1000
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)  # load_table searches the runs with the fluent API, at the global tracking URI
    try:
        table = c.load_table(c.get_run(parent).info.experiment_id, "results.json", run_ids=[parent])
    finally:
        mlflow.set_tracking_uri(before)
    assert list(table.columns[:len(CSV_COLUMNS)]) == list(CSV_COLUMNS) and len(table) == 4
    assert sorted(table["trial_id"]) == sorted(t.trial_id for t in spec.trials())
    assert sorted(table["final_top1"]) == [62.0, 63.0, 64.0, 65.0]
    csv_text = c.download_artifacts(parent, "results.csv")
    with open(csv_text) as f:
        lines = f.read().splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS) and len(lines) == 5
    assert c.get_run(parent).data.tags["sibnn.trials_reported"] == "4"
