"""Scheduling for clusters that grow: concurrency from the cluster at full size (SIBNN_MAX_CLUSTER_GPUS / _CPUS),
Tune driver functions pinned to the head's TRAIN_DRIVER_RESOURCE, trials larger than the cluster refused.

The slow tests run real sweeps on a local Ray head that declares 8 fake GPUs and the driver resource (training
falls back to the CPU, gloo, since torch sees no CUDA) and observe the trials Tune runs at once.
"""
import os

import pytest
from ray import tune

from jobs.spec import parse_spec
from jobs.sweep import (DRIVER_RESOURCE, InfeasibleTrialError, check_feasible, driver_resources,
                        max_concurrent_trials, run_sweep)


def _spec(trials: int, gpus_per_worker: float = 0, workers: int = 1, cpus: float = 0.5, runner: str = "train"):
    return parse_spec({"name": "sched", "dataset": {"kind": "digits"},
                       "grid": {"arch": ["digits_cnn"], "binarizer": ["fp"], "seed": list(range(trials))},
                       "recipe": {"epochs": 1, "batch_size": 256},
                       "resources": {"workers_per_trial": workers, "cpus_per_worker": cpus,
                                     "gpus_per_worker": gpus_per_worker, "runner": runner}})


# --- the arithmetic (fast) ----------------------------------------------------------------------------------------

def test_concurrency_counts_the_cluster_at_full_size(monkeypatch):
    scaled_to_zero = {"CPU": 4.0}  # a KubeRay head with the GPU group at 0 replicas
    monkeypatch.delenv("SIBNN_MAX_CLUSTER_GPUS", raising=False)
    monkeypatch.delenv("SIBNN_MAX_CLUSTER_CPUS", raising=False)
    assert max_concurrent_trials(_spec(6, 2), scaled_to_zero) == 1  # what it was: one at a time
    monkeypatch.setenv("SIBNN_MAX_CLUSTER_GPUS", "8")               # maxReplicas 8 × 1 GPU
    assert max_concurrent_trials(_spec(6, 2), scaled_to_zero) == 4
    assert max_concurrent_trials(_spec(10, 1), scaled_to_zero) == 8
    assert max_concurrent_trials(_spec(6, 1, workers=2), scaled_to_zero) == 4
    assert max_concurrent_trials(_spec(3, 1), scaled_to_zero) == 3  # never more than the grid
    assert max_concurrent_trials(_spec(6, 2), {"CPU": 4.0, "GPU": 16.0}) == 6  # a cluster larger than the setting
    # CPU trials: CPUs at full size
    assert max_concurrent_trials(_spec(10, cpus=8), scaled_to_zero) == 1
    monkeypatch.setenv("SIBNN_MAX_CLUSTER_CPUS", "68")  # head 4 + 8 × 8
    assert max_concurrent_trials(_spec(10, cpus=8), scaled_to_zero) == 8


def test_a_trial_larger_than_the_cluster_can_ever_be_is_refused_with_the_reason(monkeypatch):
    monkeypatch.delenv("SIBNN_MAX_CLUSTER_CPUS", raising=False)
    monkeypatch.setenv("SIBNN_MAX_CLUSTER_GPUS", "8")
    check_feasible(_spec(2, 2), {"CPU": 4.0})  # GPUs the cluster will have once it scales up: accepted
    with pytest.raises(InfeasibleTrialError, match=r"needs 2.01 CPUs and 16 GPUs .* at most 4 CPUs and 8 GPUs "
                                                   r"\(SIBNN_MAX_CLUSTER_GPUS=8"):
        check_feasible(_spec(1, 8, workers=2, cpus=1), {"CPU": 4.0})
    monkeypatch.delenv("SIBNN_MAX_CLUSTER_GPUS")
    with pytest.raises(InfeasibleTrialError, match=r"needs 0.51 CPUs and 2 GPUs .* at most 4 CPUs and 0 GPUs;"):
        check_feasible(_spec(1, 2), {"CPU": 4.0})  # a fixed cluster without GPUs
    monkeypatch.setenv("SIBNN_MAX_CLUSTER_GPUS", "eight")
    with pytest.raises(ValueError, match="SIBNN_MAX_CLUSTER_GPUS='eight': Input should be a valid number"):
        check_feasible(_spec(1, 2), {"CPU": 4.0})


def test_drivers_ask_for_the_head_resource_only_where_the_cluster_declares_it():
    assert driver_resources({"CPU": 4.0, DRIVER_RESOURCE: 1.0}) == {"CPU": 0.01, DRIVER_RESOURCE: 0.01}
    assert driver_resources({"CPU": 4.0}) == {"CPU": 0.01}  # a bare ray.init(): anywhere


def test_a_tune_runner_trial_holds_its_own_cpus_anywhere_and_no_driver_sliver():
    spec = _spec(5, runner="tune")
    # it trains in that process: its worker's CPUs, on any node (not the head's driver resource)
    assert driver_resources({"CPU": 4.0, DRIVER_RESOURCE: 1.0}, spec) == {"CPU": 0.5}
    assert max_concurrent_trials(spec, {"CPU": 2.0}) == 4  # 2 CPUs / 0.5
    assert max_concurrent_trials(_spec(5), {"CPU": 2.0}) == 3  # as Ray Train runs: 2 / (0.5 + 0.01 for the driver)
    with pytest.raises(InfeasibleTrialError, match=r"needs 0.5 CPUs and 0 GPUs \(resources: 1 workers × 0.5 CPUs, "
                                                   r"0 GPUs\), the Ray cluster can have at most 0.25 CPUs"):
        check_feasible(spec, {"CPU": 0.25})


# --- real sweeps on a head with fake GPUs (slow) ------------------------------------------------------------------

class RunningTrials(tune.Callback):
    """What Tune runs at once, seen from its own trial states, and what each driver asked for."""

    def __init__(self):
        self.most = 0
        self.started = 0
        self.driver_requests = []

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started += 1
        self.most = max(self.most, sum(t.status == "RUNNING" for t in trials))
        self.driver_requests.append(dict(trial.placement_group_factory.required_resources))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.most = max(self.most, sum(t.status == "RUNNING" for t in trials))


@pytest.fixture(scope="module")
def fake_gpu_ray(tmp_path_factory):
    """A local Ray head declaring 8 GPUs torch cannot see, and the driver resource, as the stack's head does."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    os.environ.pop("RAY_ADDRESS", None)
    os.environ["SIBNN_TORCH_BACKEND"] = "gloo"  # inherited by the Ray workers started below
    ray.init(num_cpus=8, num_gpus=8, resources={DRIVER_RESOURCE: 1}, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()
    os.environ.pop("SIBNN_TORCH_BACKEND", None)


@pytest.mark.slow
@pytest.mark.parametrize("trials,gpus,expect", [(6, 2, 4), (10, 1, 8)])
def test_a_grid_runs_as_many_trials_at_once_as_the_gpus_hold(fake_gpu_ray, mlflow_uri, tmp_path, monkeypatch,
                                                             trials, gpus, expect):
    monkeypatch.delenv("SIBNN_MAX_CLUSTER_GPUS", raising=False)
    seen = RunningTrials()
    out = run_sweep(_spec(trials, gpus), f"sched{trials}x{gpus}", storage_path=str(tmp_path), mlflow_uri=mlflow_uri,
                    data_root=None, data_fingerprint="test", callbacks=[seen])
    assert out.failed == []
    assert seen.started == trials
    assert seen.most == expect, f"at most {seen.most} trials RUNNING at once, expected {expect}"
    assert all(r.get(DRIVER_RESOURCE) == 0.01 and r.get("GPU", 0) == 0 for r in seen.driver_requests), \
        seen.driver_requests  # drivers on the head's resource, no GPU of their own


@pytest.mark.slow
def test_an_infeasible_sweep_is_refused_before_anything_runs(fake_gpu_ray, mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.delenv("SIBNN_MAX_CLUSTER_GPUS", raising=False)
    with pytest.raises(InfeasibleTrialError, match=r"needs 2.01 CPUs and 16 GPUs .* at most 8 CPUs and 8 GPUs"):
        run_sweep(_spec(2, 8, workers=2, cpus=1), "sched-infeasible", storage_path=str(tmp_path),
                  mlflow_uri=mlflow_uri, data_root=None, data_fingerprint="test")
    assert not (tmp_path / "sibnn-sched-infeasible").exists()
