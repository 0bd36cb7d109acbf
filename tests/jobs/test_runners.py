"""The runners (jobs.runners): one object per ``resources.runner``, chosen from the spec, answering every question
that differs between Ray Train trials and trials in their Tune process; and the typed LoopConfig a trial's loop gets
across Ray's process boundaries. No cluster needed (the sweeps in test_sweep.py run both runners for real)."""
from __future__ import annotations

import pickle

import cloudpickle
import pytest
from ray import tune

from jobs import runners
from jobs.runners import DRIVER_RESOURCE, LOOP_KEY, TrainRunner, TuneRunner, runner_for
from jobs.settings import JobSettings
from jobs.spec import SpecError, parse_spec
from jobs.train_loop import LoopConfig


def _spec(**resources):
    return parse_spec({"name": "r", "dataset": {"kind": "digits"},
                       "grid": {"arch": ["digits_cnn"], "binarizer": ["sibnn"], "seed": [0, 1]},
                       "recipe": {"epochs": 1, "batch_size": 64}, "resources": resources})


def test_the_runner_is_chosen_from_the_spec_and_the_default_is_ray_train():
    assert isinstance(runner_for(_spec()), TrainRunner)
    assert isinstance(runner_for(_spec(runner="tune", cpus_per_worker=0.5)), TuneRunner)
    assert runner_for(_spec(runner="train")) is runner_for(_spec())  # one stateless object per runner


def test_the_tune_runner_refuses_what_one_cpu_process_cannot_be_and_the_spec_says_so():
    tune_runner = runners.RUNNERS["tune"]
    assert tune_runner.resources_error(1, 0) is None
    assert "workers_per_trial 1 and gpus_per_worker 0" in tune_runner.resources_error(2, 0)
    assert "workers_per_trial 1 and gpus_per_worker 0" in tune_runner.resources_error(1, 1)
    assert runners.RUNNERS["train"].resources_error(8, 2) is None
    with pytest.raises(SpecError) as e:
        _spec(runner="tune", workers_per_trial=2)
    assert dict(e.value.errors)["resources.runner"] == tune_runner.resources_error(2, 0)


def test_what_a_trial_asks_for_and_holds_per_runner():
    train, tuned = _spec(workers_per_trial=2, cpus_per_worker=1.5), _spec(runner="tune", cpus_per_worker=0.35)
    head = {"CPU": 4.0, DRIVER_RESOURCE: 1.0}
    assert runner_for(train).trial_request(train.resources, head) == {"CPU": 0.01, DRIVER_RESOURCE: 0.01}
    assert runner_for(train).trial_request(train.resources, {"CPU": 4.0}) == {"CPU": 0.01}
    assert runner_for(train).trial_cpus(train.resources) == pytest.approx(3.01)  # its workers and its driver
    assert runner_for(tuned).trial_request(tuned.resources, head) == {"CPU": 0.35}  # anywhere, its own CPUs
    assert runner_for(tuned).trial_cpus(tuned.resources) == 0.35
    assert runner_for(train).need_detail() == ", plus 0.01 CPU for its driver" and runner_for(tuned).need_detail() == ""


def test_tune_keeps_the_checkpoints_only_when_the_trial_runs_in_its_process():
    train_opts, tune_opts = TrainRunner().tune_run_options(), TuneRunner().tune_run_options()
    assert set(train_opts) == {"failure_config"} and train_opts["failure_config"].max_failures == 1
    keep = tune_opts["checkpoint_config"]
    assert isinstance(keep, tune.CheckpointConfig)
    assert (keep.num_to_keep, keep.checkpoint_score_attribute, keep.checkpoint_score_order) == (2, "val_top1", "max")
    assert tune_opts["failure_config"].max_failures == runners.TRAIN_MAX_FAILURES == 2  # as Train restarts a worker


def _loop(spec) -> LoopConfig:
    return LoopConfig(spec=spec, trial=spec.trials()[0], experiment_id="e1", mlflow_uri="http://mlflow:5000",
                      mlflow_run_id="r1", data_root=None, data_fingerprint="fp",
                      settings=JobSettings(torch_backend="gloo"))


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
def test_the_loop_config_crosses_a_process_boundary_whole(dumps):
    loop = _loop(_spec(runner="tune", cpus_per_worker=0.5))
    back = pickle.loads(dumps({LOOP_KEY: loop}))[LOOP_KEY]  # Ray Train's train_loop_config, as Ray ships it
    assert back == loop and back.spec == loop.spec and back.trial.trial_id == "digits_cnn-sibnn-rho0.3-s0"
    assert back.settings.torch_backend == "gloo" and isinstance(back.runner, TuneRunner)
    with pytest.raises(AttributeError):
        back.mlflow_run_id = "other"  # frozen: what the driver built is what every worker reads


def test_the_tune_runner_fits_by_calling_the_entry_in_this_process_with_the_loop_config():
    loop = _loop(_spec(runner="tune", cpus_per_worker=0.5))
    seen = []
    best = TuneRunner().fit(lambda config: seen.append(config) or "best", loop, run_name="e1-t",
                            storage_path="/unused", torch_backend=None)
    assert seen == [{LOOP_KEY: loop}] and best == "best"
