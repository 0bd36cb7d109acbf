"""The best model of a sweep (jobs.sweep.log_best_models) on a real MLflow server: it is logged with a signature and
registered, linked to the trial's run, and the trial's run stays as it ended — it is not reopened, so its end time
still says when the trial finished, not when the sweep did."""
from __future__ import annotations

import time
import uuid

import mlflow
import mlflow.pytorch
import pytest
import torch

from jobs import tracking
from jobs.spec import parse_spec
from jobs.sweep import _log_checkpoint, log_best_models
from sibnn.engine import TrainState
from sibnn.trial import TrialConfig, build_trial

pytestmark = pytest.mark.slow  # a real MLflow server (tests/jobs/conftest.py)

# A name no sweep of the other tests registers (they share the server): sibnn-digits_cnn-sibnn_layer.
ARCH, BINARIZER = "digits_cnn", "sibnn_layer"


def _finished_trial(c, experiment_id: str):
    """A trial run as a sweep leaves it: its best checkpoint as an artifact, its final metric, ended FINISHED."""
    spec = parse_spec({"name": "best", "dataset": {"kind": "digits"},
                       "grid": {"arch": [ARCH], "binarizer": [BINARIZER], "rho": [0.3], "seed": [0]},
                       "recipe": {"epochs": 1, "batch_size": 64}})
    (trial,) = spec.trials()
    parent = tracking.ensure_parent_run(c, experiment_id, spec)
    run_id = tracking.ensure_trial_run(c, experiment_id, parent, spec, trial)
    t = build_trial(TrialConfig(dataset="digits", arch=ARCH, binarizer=BINARIZER, epochs=1), device=torch.device("cpu"))
    _log_checkpoint(c, run_id, t.checkpoint(TrainState()))
    c.log_metric(run_id, "best_val_top1", 50.0)
    tracking.set_trial_state(c, run_id, "FINISHED")
    return run_id, t.model.eval()


def test_the_best_model_has_a_signature_and_its_trial_run_is_not_reopened(mlflow_uri):
    c = tracking.client(mlflow_uri)
    experiment_id = f"best{uuid.uuid4().hex[:8]}"
    run_id, model = _finished_trial(c, experiment_id)
    ended = c.get_run(run_id).info
    time.sleep(0.05)  # a reopened run would end at least this much later

    uris = log_best_models(c, mlflow_uri, tracking.results(c, experiment_id))

    after = c.get_run(run_id).info
    assert (after.status, after.end_time) == ("FINISHED", ended.end_time), "the finished trial run was reopened"
    assert c.get_run(run_id).data.tags[tracking.TAG_STATE] == "FINISHED"

    uri = uris[(ARCH, BINARIZER)]
    assert c.get_run(run_id).data.tags[tracking.TAG_MODEL_URI] == uri
    mlflow.set_tracking_uri(mlflow_uri)
    info = mlflow.models.get_model_info(uri)
    assert info.signature is not None, "the model was logged without a signature"
    (x_spec,), (y_spec,) = info.signature.inputs.inputs, info.signature.outputs.inputs
    assert (str(x_spec.type), x_spec.shape) == ("float32", (-1, 1, 8, 8))  # any batch of 8×8 digits
    assert (str(y_spec.type), y_spec.shape) == ("float32", (-1, 10))      # → 10 logits

    # linked to the trial's run without resuming it: its source, and one of its outputs
    logged = c.get_logged_model(info.model_id)
    assert logged.source_run_id == run_id and logged.experiment_id == c.get_run(run_id).info.experiment_id
    assert info.model_id in [o.model_id for o in c.get_run(run_id).outputs.model_outputs]
    (version,) = [v for v in c.search_model_versions(f"name = 'sibnn-{ARCH}-{BINARIZER}'") if v.run_id == run_id]
    assert version.creation_timestamp > after.end_time  # registered after the trial ended, which stayed put

    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(mlflow.pytorch.load_model(f"models:/{version.name}/{version.version}")(x), model(x))

    # the next driver of the same sweep keeps it: no second model, no second version
    assert log_best_models(c, mlflow_uri, tracking.results(c, experiment_id)) == uris
    assert [v.run_id for v in c.search_model_versions(f"name = 'sibnn-{ARCH}-{BINARIZER}'")].count(run_id) == 1
    assert c.get_run(run_id).info.end_time == ended.end_time
