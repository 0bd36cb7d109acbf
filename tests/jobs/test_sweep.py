"""Sweeps on a real local Ray (CPU, gloo) recording into a real MLflow server (SQLite backend)."""
import os
import signal
import threading
import time

import pytest

from jobs import tracking
from jobs.run import main as run_main
from jobs.spec import parse_spec
from jobs.sweep import max_concurrent_trials, run_sweep

pytestmark = pytest.mark.slow


def _spec(**over):
    base = {"name": "test", "dataset": {"kind": "digits"},
            "grid": {"arch": ["digits_cnn"], "binarizer": ["sibnn"], "rho": [0.3], "seed": [0]},
            "recipe": {"epochs": 2, "batch_size": 64},
            "resources": {"workers_per_trial": 1, "cpus_per_worker": 0.5}}
    for k, v in over.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) else v
    return parse_spec(base)


def test_invalid_spec_is_rejected_before_ray_starts(capsys, tmp_path):
    import ray

    assert not ray.is_initialized()
    rc = run_main(["--spec-json", '{"name": "x", "dataset": {"kind": "imagenet"}, "grid": {"arch": ["vgg"], '
                   '"binarizer": ["sibnn"]}}', "--experiment-id", "bad", "--storage-path", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "dataset.root: required for dataset kind 'imagenet'" in err and "grid.arch: unknown arch 'vgg'" in err
    assert not ray.is_initialized(), "nothing ran"
    assert run_main(["--preset", "digits", "--experiment-id", "has space", "--storage-path", str(tmp_path)]) == 2


def test_missing_dataset_root_is_a_clear_error_before_ray_starts(capsys, tmp_path):
    rc = run_main(["--preset", "mnist-table", "--root", str(tmp_path / "nope"), "--experiment-id", "m1",
                   "--storage-path", str(tmp_path)])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_missing_fashion_mnist_package_is_a_clear_error_before_ray_starts(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SIBNN_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    spec = '{"name": "f", "dataset": {"kind": "fashion_mnist"}, "grid": {"arch": ["mlp_small"], "binarizer": ["fp"]}}'
    rc = run_main(["--spec-json", spec, "--experiment-id", "f1", "--storage-path", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "apt-get install dataset-fashion-mnist" in err and str(tmp_path / "absent") in err


def test_concurrency_follows_the_cluster(tmp_path):
    spec = _spec(grid={"seed": [0, 1, 2, 3, 4, 5]})
    assert max_concurrent_trials(spec, {"CPU": 2.0}) == 3          # 0.5 CPU per worker + a sliver per driver
    gpu = _spec(resources={"workers_per_trial": 2, "gpus_per_worker": 1}, grid={"seed": [0, 1, 2, 3, 4]})
    assert max_concurrent_trials(gpu, {"CPU": 64.0, "GPU": 8.0}) == 4
    assert max_concurrent_trials(gpu, {"CPU": 64.0, "GPU": 1.0}) == 1


def test_a_trial_larger_than_the_cluster_is_refused_not_left_waiting(monkeypatch):
    from jobs.sweep import InfeasibleTrialError, check_feasible

    spec = _spec(resources={"workers_per_trial": 2, "cpus_per_worker": 1})
    monkeypatch.delenv("SIBNN_MAX_CLUSTER_GPUS", raising=False)
    monkeypatch.delenv("SIBNN_MAX_CLUSTER_CPUS", raising=False)
    with pytest.raises(InfeasibleTrialError, match="needs 2.01 CPUs and 0 GPUs .* at most 2 CPUs and 0 GPUs"):
        check_feasible(spec, {"CPU": 2.0})
    gpu = _spec(resources={"gpus_per_worker": 1})
    with pytest.raises(InfeasibleTrialError, match="1 GPUs"):
        check_feasible(gpu, {"CPU": 8.0})
    check_feasible(_spec(), {"CPU": 2.0})  # 0.51 CPU fits
    monkeypatch.setenv("SIBNN_MAX_CLUSTER_GPUS", "8")
    check_feasible(gpu, {"CPU": 8.0})  # an autoscaling cluster gets its GPUs when the trial asks (test_scheduling)


def test_grid_on_digits_yields_child_runs_under_one_parent(local_ray, mlflow_uri, tmp_path):
    spec = _spec(grid={"binarizer": ["sibnn", "sign"], "seed": [0, 1]})
    out = run_sweep(spec, "grid2x2", storage_path=str(tmp_path), mlflow_uri=mlflow_uri, data_root=None,
                    data_fingerprint="test")
    assert out.failed == []
    c = tracking.client(mlflow_uri)
    runs = tracking.trial_runs(c, "grid2x2")
    assert len(runs) == 4
    assert {r.data.tags[tracking.PARENT_TAG] for r in runs} == {out.parent_run_id}
    assert all(r.info.status == "FINISHED" for r in runs)
    rows = {r["trial_id"]: r for r in out.rows}
    assert set(rows) == {t.trial_id for t in spec.trials()}
    for r in rows.values():
        assert r["epochs"] == 2 and 0 < r["final_top1"] <= 100 and r["best_top1"] >= r["final_top1"]
    assert rows["digits_cnn-sign-s0"]["sparsity"] == 0.0, "sign codes are never zero"
    packed = rows["digits_cnn-sibnn-rho0.3-s0"]
    assert 0 < packed["packed_file_bytes"] < packed["packed_bytes"] * 2 and packed["packed_latency_ms"] > 0
    assert rows["digits_cnn-sign-s0"]["packed_file_bytes"] is None, "only Si-BNN models are packed"
    assert "model.sibnn" in {a.path for a in c.list_artifacts(packed["run_id"])}
    assert 0.0 < rows["digits_cnn-sibnn-rho0.3-s0"]["sparsity"] < 1.0
    parent = c.get_run(out.parent_run_id)
    assert parent.info.status == "FINISHED"
    artifacts = {a.path for a in c.list_artifacts(out.parent_run_id)}
    assert {"results.csv", "accuracy_vs_rho.png", "training_curves.png"} <= artifacts
    csv_text = open(c.download_artifacts(out.parent_run_id, "results.csv", str(tmp_path))).read()
    assert csv_text.count("\n") == 5 and "digits_cnn-sibnn-rho0.3-s1" in csv_text
    # a driver restarted with the same experiment id resumes: finished trials are not run again
    again = run_sweep(spec, "grid2x2", storage_path=str(tmp_path), mlflow_uri=mlflow_uri, data_root=None,
                      data_fingerprint="test")
    assert again.parent_run_id == out.parent_run_id
    assert len(tracking.trial_runs(c, "grid2x2")) == 4
    assert all(len(c.get_metric_history(r.info.run_id, "val_top1")) == 2 for r in runs)


def test_two_worker_ddp_trial_on_synthetic_jpegs_through_dali(local_ray, mlflow_uri, tmp_path):
    from sibnn.data.synthetic import write_synthetic_imagenet

    root = tmp_path / "synth"
    write_synthetic_imagenet(root, 4, 6, val_per_class=3)
    spec = _spec(dataset={"kind": "synthetic", "root": str(root), "policy": "rrc", "image_size": 32},
                 grid={"arch": ["resnet18"]}, recipe={"epochs": 2, "batch_size": 8},
                 resources={"workers_per_trial": 2, "cpus_per_worker": 0.5})
    out = run_sweep(spec, "ddp2", storage_path=str(tmp_path / "store"), mlflow_uri=mlflow_uri,
                    data_root=str(root), data_fingerprint="synthfp")
    assert out.failed == []
    c = tracking.client(mlflow_uri)
    (run,) = tracking.trial_runs(c, "ddp2")
    top1 = c.get_metric_history(run.info.run_id, "val_top1")
    assert sorted(m.step for m in top1) == [1, 2]
    samples = c.get_metric_history(run.info.run_id, "val_loss")
    assert len(samples) == 2
    tags = run.data.tags
    assert tags["sibnn.manifest.data_fingerprint"] == "synthfp"
    assert tags["sibnn.manifest.version.torch"].startswith("2.13.0")
    assert tags["sibnn.manifest.seed"] == "0" and tags["sibnn.manifest.device"].startswith("cpu")
    assert len(tags["sibnn.manifest.git_commit"]) >= 7
    assert run.data.params["arch"] == "resnet18" and run.data.params["resources.workers_per_trial"] == "2"
    layers = [k for k in run.data.metrics if k.startswith("sparsity/")]
    assert len(layers) == 16 and not any("module." in k for k in layers)
    assert run.data.metrics["packed_bytes"] < run.data.metrics["fp32_bytes"]
    assert os.path.isdir(tags[tracking.TAG_BEST_CHECKPOINT])


def _actors(local_ray, class_name: str, state: str | None = None) -> list:
    from ray.util.state import list_actors

    filters = [("class_name", "=", class_name)] + ([("state", "=", state)] if state else [])
    # ours, not another cluster on the machine
    return list_actors(address=local_ray.address_info["address"], filters=filters, limit=10_000)


def _sweep_with_a_kill(local_ray, c, spec, experiment_id: str, storage, mlflow_uri, actor_class: str) -> tuple:
    """Run the sweep while a thread SIGKILLs the newest ``actor_class`` process once the (first) trial has logged
    two epochs; returns the outcome and what was killed (pid, epochs logged by then). The process — one of this
    test's Ray worker processes that was not running ``actor_class`` before this sweep — is found by its process
    title among this process's descendants (tests/jobs/procs.py: milliseconds, where Ray's state API took longer
    than a 15-second trial lived on a loaded CI machine)."""
    from tests.jobs.procs import descendants_running

    killed = {}
    title = f"ray::{actor_class}"
    before = set(descendants_running(title))  # an earlier sweep's process still exiting is not ours

    def kill_mid_run():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            runs = tracking.trial_runs(c, experiment_id)
            if runs and len(tracking.logged_epochs(c, runs[0].info.run_id)) >= 2:
                live = [p for p in descendants_running(title) if p not in before]
                if live:
                    killed["epochs_logged"] = len(tracking.logged_epochs(c, runs[0].info.run_id))
                    os.kill(live[-1], signal.SIGKILL)
                    killed["pid"] = live[-1]
                    return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_mid_run, daemon=True)
    killer.start()
    out = run_sweep(spec, experiment_id, storage_path=str(storage), mlflow_uri=mlflow_uri, data_root=None,
                    data_fingerprint="test")
    killer.join(5)
    return out, killed


def test_killed_worker_resumes_from_last_checkpoint_without_missing_epochs(local_ray, mlflow_uri, tmp_path):
    epochs = 8
    spec = _spec(recipe={"epochs": epochs, "batch_size": 16},
                 resources={"workers_per_trial": 2, "cpus_per_worker": 0.5})
    c = tracking.client(mlflow_uri)
    out, killed = _sweep_with_a_kill(local_ray, c, spec, "fault", tmp_path, mlflow_uri, "RayTrainWorker")
    assert "pid" in killed, "the drill killed a worker"
    assert killed["epochs_logged"] < epochs, "the worker died before the trial finished"
    assert out.failed == []
    runs = tracking.trial_runs(c, "fault")
    assert len(runs) == 1, "one MLflow run, resumed, not a second one"
    steps = [m.step for m in c.get_metric_history(runs[0].info.run_id, "val_top1")]
    assert sorted(steps) == list(range(1, epochs + 1)), "every epoch exactly once"
    assert runs[0].info.status == "FINISHED"


def test_tune_runner_trains_in_the_trial_process_and_resumes_after_a_crash(local_ray, mlflow_uri, tmp_path):
    """runner "tune": no Ray Train run is started; the trial's own process is killed mid-run and Tune resumes it
    from its last checkpoint, every epoch logged once; the best checkpoint and the model reach MLflow."""
    import json

    import torch

    epochs = 10
    spec = _spec(recipe={"epochs": epochs, "batch_size": 16}, resources={"runner": "tune", "cpus_per_worker": 0.5})
    c = tracking.client(mlflow_uri)
    controllers_before = len(_actors(local_ray, "TrainController"))
    # the one trial's process: Tune's function-trainable actor
    out, killed = _sweep_with_a_kill(local_ray, c, spec, "tunerunner", tmp_path, mlflow_uri, "ImplicitFunc")
    assert "pid" in killed, "the drill killed a trial process"
    assert killed["epochs_logged"] < epochs, "the process died before its trial finished"
    assert out.failed == []
    assert len(_actors(local_ray, "TrainController")) == controllers_before, "no Ray Train run was started"
    (run,) = tracking.trial_runs(c, "tunerunner")  # one MLflow run, resumed, not a second one
    top1 = c.get_metric_history(run.info.run_id, "val_top1")
    assert sorted(m.step for m in top1) == list(range(1, epochs + 1)), "every epoch exactly once"
    assert run.info.status == "FINISHED"
    # what Tune received: the resumed process went on from its checkpoint, it did not start over at epoch 1
    trial_dir = tmp_path / tracking.experiment_name("tunerunner") / "digits_cnn-sibnn-rho0.3-s0"
    reported = [json.loads(line)["epoch"] for line in (trial_dir / "result.json").read_text().splitlines()]
    assert reported.count(1) == 1 and sorted(set(reported)) == list(range(1, epochs + 1)), reported
    best_dir = run.data.tags[tracking.TAG_BEST_CHECKPOINT]
    assert os.path.isdir(best_dir) and best_dir.startswith(str(trial_dir)), "Tune persisted the checkpoint"
    hist = torch.load(os.path.join(best_dir, "checkpoint.pt"), weights_only=False)["state"]["history"]
    assert hist[-1]["val_top1"] == max(m.value for m in top1), "the checkpoint named best holds the best epoch"
    assert "checkpoint" in {a.path for a in c.list_artifacts(run.info.run_id)}, "the best model is in MLflow"
    assert out.rows[0]["packed_file_bytes"] > 0, "the Si-BNN model is packed"


def test_tune_runner_trains_exactly_what_a_single_worker_ray_train_run_trains(local_ray, mlflow_uri, tmp_path):
    """Same trial, both runners: the same loop and the same seed give the same per-epoch metrics, bit for bit."""
    histories = {}
    for runner in ("train", "tune"):
        spec = _spec(recipe={"epochs": 2, "batch_size": 32}, resources={"runner": runner, "cpus_per_worker": 0.5})
        out = run_sweep(spec, f"same-{runner}", storage_path=str(tmp_path / runner), mlflow_uri=mlflow_uri,
                        data_root=None, data_fingerprint="test")
        assert out.failed == []
        c = tracking.client(mlflow_uri)
        (run,) = tracking.trial_runs(c, f"same-{runner}")
        histories[runner] = {key: [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, key)]
                             for key in ("val_top1", "train_loss", "sparsity_mean")}
    assert len(histories["train"]["val_top1"]) == 2
    assert histories["tune"] == histories["train"]


def test_sigterm_cancels_cleanly_marks_runs_killed_and_keeps_checkpoints(mlflow_uri, tmp_path):
    """``ray job stop`` sends SIGTERM to the entrypoint: the job marks its MLflow runs KILLED and exits 143."""
    import json
    import subprocess
    import sys

    from console.stack import Server

    spec = _spec(recipe={"epochs": 30, "batch_size": 16})
    import tempfile

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    proc = subprocess.Popen([sys.executable, "-m", "jobs.run", "--spec-json", json.dumps(spec.model_dump()),
                             "--experiment-id", "cancelme", "--storage-path", str(tmp_path / "store"),
                             "--mlflow-uri", mlflow_uri, "--ray-temp-dir", ray_tmp],
                            env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    c = tracking.client(mlflow_uri)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            runs = tracking.trial_runs(c, "cancelme")
            if runs and tracking.logged_epochs(c, runs[0].info.run_id):
                break
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("the job logged no epoch in time")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 143
        output = proc.stdout.read().decode()
    finally:
        Server("jobs.run", proc, tmp_path / "jobs.run.log").stop()  # the whole group, Ray's workers too
    assert "marked KILLED" in output
    (run,) = tracking.trial_runs(c, "cancelme")
    assert run.info.status == "KILLED" and run.data.tags[tracking.TAG_STATE] == "KILLED"
    assert tracking.parent_run(c, "cancelme").info.status == "KILLED"
    ckpts = list((tmp_path / "store").glob("cancelme-*/checkpoint_*"))
    assert ckpts, "the last checkpoint survives cancellation"
