"""The job side's settings (jobs.settings.JobSettings): the variables the service passes keep their names, defaults
mean "unset", a bad value is an error naming the variable (before Ray starts), and the object travels to the trials
as it was read."""
from __future__ import annotations

import pickle
import subprocess
from pathlib import Path

import pytest

from jobs.settings import JobSettings, JobSettingsError

VARIABLES = ("SIBNN_DATA_ROOTS", "SIBNN_STORAGE_PATH", "MLFLOW_TRACKING_URI", "RAY_ADDRESS", "SIBNN_MAX_CLUSTER_GPUS",
             "SIBNN_MAX_CLUSTER_CPUS", "SIBNN_TORCH_BACKEND", "SIBNN_GIT_COMMIT")


@pytest.fixture
def clean_env(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_nothing_set_means_every_setting_unset(clean_env):
    s = JobSettings.from_env()
    assert s.model_dump() == {"data_roots": None, "storage_path": None, "mlflow_tracking_uri": None,
                              "ray_address": None, "max_cluster_gpus": None, "max_cluster_cpus": None,
                              "torch_backend": None, "git_commit": None}
    assert s.data_root_paths is None and not s.declares_cluster_size
    with pytest.raises(RuntimeError, match="MLFLOW_TRACKING_URI is not set"):
        s.mlflow_uri()


def test_each_variable_reaches_its_setting(clean_env, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    env = {"SIBNN_DATA_ROOTS": f"{tmp_path / 'link'}:{tmp_path / 'b'}", "SIBNN_STORAGE_PATH": "s3://bucket/runs",
           "MLFLOW_TRACKING_URI": "http://mlflow:5000", "RAY_ADDRESS": "ray://head:10001",
           "SIBNN_MAX_CLUSTER_GPUS": "8", "SIBNN_MAX_CLUSTER_CPUS": " 68 ", "SIBNN_TORCH_BACKEND": "gloo",
           "SIBNN_GIT_COMMIT": "abc1234"}
    for k, v in env.items():
        clean_env.setenv(k, v)
    s = JobSettings.from_env()
    assert (s.storage_path, s.mlflow_uri(), s.ray_address) == ("s3://bucket/runs", "http://mlflow:5000",
                                                               "ray://head:10001")
    assert (s.max_cluster_gpus, s.max_cluster_cpus, s.torch_backend, s.git_commit) == (8.0, 68.0, "gloo", "abc1234")
    assert s.data_root_paths == [(tmp_path / "a").resolve(), tmp_path / "b"]  # symlinks resolved


def test_a_blank_variable_is_unset_but_blank_data_roots_still_confine(clean_env):
    for name in VARIABLES:
        clean_env.setenv(name, "")
    s = JobSettings.from_env()
    assert s.max_cluster_gpus is None and s.storage_path is None and s.ray_address is None
    assert s.data_root_paths == []  # set but empty: only the storage folder is allowed (jobs.run._confined)


@pytest.mark.parametrize("raw,why", [("eight", "valid number"), ("-1", "greater than or equal to 0"),
                                     ("inf", "finite number"), ("nan", "finite number")])
def test_a_bad_cluster_size_is_an_error_naming_the_variable_and_its_value(clean_env, raw, why):
    clean_env.setenv("SIBNN_MAX_CLUSTER_GPUS", raw)
    with pytest.raises(JobSettingsError) as e:
        JobSettings.from_env()
    assert str(e.value).startswith(f"SIBNN_MAX_CLUSTER_GPUS={raw!r}: ") and why in str(e.value)
    assert isinstance(e.value, ValueError)


def test_every_bad_variable_is_named_at_once(clean_env):
    clean_env.setenv("SIBNN_MAX_CLUSTER_GPUS", "many")
    clean_env.setenv("SIBNN_MAX_CLUSTER_CPUS", "-4")
    msg = str(pytest.raises(JobSettingsError, JobSettings.from_env).value)
    assert "SIBNN_MAX_CLUSTER_GPUS='many'" in msg and "SIBNN_MAX_CLUSTER_CPUS='-4'" in msg


def test_the_job_refuses_a_bad_setting_in_one_line_before_ray_starts(clean_env, tmp_path, capsys):
    import ray

    from jobs.run import EXIT_BAD_INPUT, main

    clean_env.setenv("SIBNN_MAX_CLUSTER_CPUS", "lots")
    was_up = ray.is_initialized()
    rc = main(["--preset", "digits", "--experiment-id", "e1", "--storage-path", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == EXIT_BAD_INPUT
    assert err.startswith("error: SIBNN_MAX_CLUSTER_CPUS='lots': ") and err.count("\n") == 1
    assert ray.is_initialized() == was_up, "no Ray was started or stopped"


def test_the_names_the_service_passes_are_the_names_the_job_reads(clean_env, tmp_path):
    from service.ray_jobs import runtime_env
    from service.settings import Settings

    service = Settings(home=tmp_path, mlflow_tracking_uri="http://mlflow:5000", data_roots=f"{tmp_path}/d")
    for k, v in runtime_env(service, "e1")["env_vars"].items():
        clean_env.setenv(k, v)
    job = JobSettings.from_env()
    assert job.mlflow_uri() == "http://mlflow:5000"
    assert job.storage_path == service.runs_path
    assert job.data_root_paths == service.data_root_paths


def test_the_settings_pickle_as_read_and_a_worker_does_not_read_its_own_environment(clean_env):
    clean_env.setenv("SIBNN_TORCH_BACKEND", "gloo")
    read = JobSettings.from_env()
    clean_env.setenv("SIBNN_TORCH_BACKEND", "nccl")  # what a process elsewhere might have
    assert pickle.loads(pickle.dumps(read)) == read and pickle.loads(pickle.dumps(read)).torch_backend == "gloo"


def test_the_manifest_commit_falls_back_to_the_declared_one_without_a_checkout(tmp_path, monkeypatch):
    from jobs import manifest

    assert subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True).returncode != 0
    monkeypatch.setattr(manifest, "_REPO", Path(tmp_path))
    manifest.git_commit.cache_clear()
    try:
        assert manifest.git_commit("abc1234") == "abc1234"
        assert manifest.git_commit(None) == "unknown"
    finally:
        manifest.git_commit.cache_clear()
