"""Models in MLflow: every trial run carries its best checkpoint (state dict + config) and, for Si-BNN, its packed
file; the best trial per (arch, binarizer) is an ``mlflow.pytorch`` model registered as ``sibnn-<arch>-<binarizer>``.
A model is downloaded through MLflow (registry and ``sibnn download``'s path) and evaluated."""
from __future__ import annotations

import mlflow
import mlflow.pytorch
import pytest
import torch

from jobs import tracking
from jobs.spec import parse_spec
from jobs.sweep import model_from_checkpoint, run_sweep
from console.cli import download_trial
from sibnn.data.small import load_small_dataset, small_loaders
from sibnn.engine import evaluate

pytestmark = pytest.mark.slow


def test_trials_carry_their_models_and_the_best_is_registered(local_ray, mlflow_uri, tmp_path):
    spec = parse_spec({"name": "models", "dataset": {"kind": "digits"},
                       "grid": {"arch": ["digits_cnn"], "binarizer": ["sibnn", "fp"], "rho": [0.3], "seed": [0, 1]},
                       "recipe": {"epochs": 2, "batch_size": 64},
                       "resources": {"workers_per_trial": 1, "cpus_per_worker": 0.5}})
    out = run_sweep(spec, "models1", storage_path=str(tmp_path / "store"), mlflow_uri=mlflow_uri, data_root=None,
                    data_fingerprint="test")
    assert out.failed == []
    c = tracking.client(mlflow_uri)
    mlflow.set_tracking_uri(mlflow_uri)
    rows = {r["trial_id"]: r for r in out.rows}
    for r in rows.values():
        arts = {a.path for a in c.list_artifacts(r["run_id"], "checkpoint")}
        assert arts == {"checkpoint/model_state.pt", "checkpoint/config.json"}, r["trial_id"]
        assert r["checkpoint_uri"].endswith("/checkpoint/model_state.pt")
        assert (r["packed_uri"] is not None) == (r["binarizer"] == "sibnn")
    # one MLflow model per (arch, binarizer): the trial with the best top-1
    ours = {r["run_id"] for r in rows.values()}
    for binarizer in ("sibnn", "fp"):
        group = [r for r in rows.values() if r["binarizer"] == binarizer]
        best = max(group, key=lambda r: r["best_top1"])
        assert best["model_uri"] and all(r["model_uri"] is None for r in group if r is not best)
        # the registry is shared by every experiment on this server (other tests' sweeps add versions): this
        # experiment's versions are exactly its best trial's
        versions = c.search_model_versions(f"name = 'sibnn-digits_cnn-{binarizer}'")
        assert [v.run_id for v in versions if v.run_id in ours] == [best["run_id"]]
        # logged with its signature, after its trial's run ended, without reopening that run (test_best_model.py)
        (version,) = [v for v in versions if v.run_id in ours]
        assert version.creation_timestamp > c.get_run(best["run_id"]).info.end_time
        assert mlflow.models.get_model_info(best["model_uri"]).signature is not None

    ds = load_small_dataset("digits")
    _, val = small_loaders(ds, 64)
    best_sibnn = max((r for r in rows.values() if r["binarizer"] == "sibnn"), key=lambda r: r["best_top1"])
    mlflow.set_tracking_uri(mlflow_uri)
    # this experiment's version (other tests' sweeps on this server register digits_cnn models too)
    (mine,) = [v for v in c.search_model_versions("name = 'sibnn-digits_cnn-sibnn'") if v.run_id in ours]
    registered = mlflow.pytorch.load_model(f"models:/sibnn-digits_cnn-sibnn/{mine.version}")
    top1 = evaluate(registered, val, device=torch.device("cpu"))["val_top1"]
    assert top1 == pytest.approx(best_sibnn["best_top1"], abs=1e-6), "the registered model is the best checkpoint"

    # `sibnn download`'s path: the checkpoint artifact through MLflow, rebuilt and evaluated
    path = download_trial(best_sibnn, False, tmp_path / "dl", mlflow_uri)
    model = model_from_checkpoint(torch.load(path, map_location="cpu", weights_only=False))
    assert evaluate(model, val, device=torch.device("cpu"))["val_top1"] == pytest.approx(top1, abs=1e-6)
    packed = download_trial(best_sibnn, True, tmp_path / "dl", mlflow_uri)
    assert packed.name == "model.sibnn" and packed.stat().st_size == best_sibnn["packed_file_bytes"]
    fp = next(r for r in rows.values() if r["binarizer"] == "fp")
    with pytest.raises(LookupError, match="packed file"):
        download_trial(fp, True, tmp_path / "dl", mlflow_uri)

    # a restarted driver does not log or register the models again
    again = run_sweep(spec, "models1", storage_path=str(tmp_path / "store"), mlflow_uri=mlflow_uri, data_root=None,
                      data_fingerprint="test")
    assert {r["trial_id"]: r["model_uri"] for r in again.rows} == {k: r["model_uri"] for k, r in rows.items()}
    mine = [v for v in c.search_model_versions("name = 'sibnn-digits_cnn-sibnn'") if v.run_id in ours]
    assert len(mine) == 1
