"""A trial's numbers depend on (spec, seed, hardware, thread count) only: the same trial gives bit-identical
per-epoch metrics on an idle machine and next to processes burning every core, and a different thread count (which
the trial's resources fix) gives different numbers — so the comparison is sensitive to what it guards against."""
import subprocess
import sys

import pytest

from jobs import tracking
from jobs.spec import parse_spec
from jobs.sweep import run_sweep

pytestmark = pytest.mark.slow

KEYS = ("val_top1", "val_loss", "train_loss", "sparsity_mean", "theta_mean", "delta_mean")


def _spec(cpus: float):
    return parse_spec({"name": "determinism", "dataset": {"kind": "digits"},
                       "grid": {"arch": ["digits_cnn"], "binarizer": ["sibnn"], "rho": [0.3], "seed": [0]},
                       "recipe": {"epochs": 2, "batch_size": 64},
                       "resources": {"workers_per_trial": 1, "cpus_per_worker": cpus, "runner": "tune"}})


def _history(mlflow_uri, tmp_path, experiment_id: str, cpus: float):
    out = run_sweep(_spec(cpus), experiment_id, storage_path=str(tmp_path / experiment_id), mlflow_uri=mlflow_uri,
                    data_root=None, data_fingerprint="test")
    assert out.failed == []
    c = tracking.client(mlflow_uri)
    (run,) = tracking.trial_runs(c, experiment_id)
    hist = {k: [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, k)] for k in KEYS}
    return hist, run.data.tags


def test_a_trial_gives_the_same_history_idle_and_next_to_cpu_burners(local_ray, mlflow_uri, tmp_path):
    idle, tags = _history(mlflow_uri, tmp_path, "det-idle", 1)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        busy, _ = _history(mlflow_uri, tmp_path, "det-busy", 1)
    finally:
        for p in burners:
            p.kill()
            p.wait()
    assert len(idle["val_top1"]) == 2 and idle == busy
    # the manifest says what the numbers depend on besides the spec and the seed
    assert tags["sibnn.manifest.torch_threads"] == "1" and tags["sibnn.manifest.cpu_model"]
    assert "sibnn.manifest.gpu_model" in tags
    # two whole CPUs per worker: two threads, and float reductions split otherwise
    two, tags2 = _history(mlflow_uri, tmp_path, "det-two", 2)
    assert tags2["sibnn.manifest.torch_threads"] == "2"
    assert two["train_loss"] != idle["train_loss"]
