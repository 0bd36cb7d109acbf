"""Checkpoints on an object store: a sweep whose storage_path is ``s3://…`` writes its Tune state and Train
checkpoints to a real S3 API (moto's standalone server on a loopback port), and a rerun on a machine that kept
nothing locally resumes from S3. Ray resolves the URI with pyarrow, which reads the AWS SDK's variables
(``AWS_ENDPOINT_URL_S3`` points it at the local server), exactly as on a cluster node."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from jobs import tracking
from jobs.spec import parse_spec
from console import stack

pytestmark = pytest.mark.slow

BUCKET = "sibnn-test"


@pytest.fixture
def s3(tmp_path):
    """moto's S3 server as a subprocess on a free loopback port; stopped by its process id."""
    port = stack.free_port()
    server = stack.spawn("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                         tmp_path / "moto.log")
    try:
        stack.wait_http(server, f"http://127.0.0.1:{port}/moto-api/", 60)
        env = {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
               "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
        import boto3

        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], aws_access_key_id="test",
                              aws_secret_access_key="test", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client, env
    finally:
        server.stop()


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _job(spec, experiment_id: str, mlflow_uri: str, env: dict, home, log):
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    argv = [sys.executable, "-m", "jobs.run", "--spec-json", json.dumps(spec.model_dump()),
            "--experiment-id", experiment_id, "--storage-path", f"s3://{BUCKET}/runs",
            "--mlflow-uri", mlflow_uri, "--ray-temp-dir", ray_tmp]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    proc = stack.spawn("jobs.run", argv, log, {**base, **env, "HOME": str(home)})
    return proc, ray_tmp


def test_a_sweep_checkpoints_to_s3_and_resumes_from_it_with_no_local_state(s3, mlflow_uri, tmp_path):
    client, env = s3
    epochs = 6
    spec = parse_spec({"name": "s3", "dataset": {"kind": "digits"},
                       "grid": {"arch": ["digits_cnn"], "binarizer": ["sibnn"], "rho": [0.3], "seed": [0]},
                       "recipe": {"epochs": epochs, "batch_size": 16},
                       "resources": {"workers_per_trial": 1, "cpus_per_worker": 0.5}})
    (trial,) = spec.trials()
    c = tracking.client(mlflow_uri)
    home = tmp_path / "home"  # everything the job keeps locally (Ray results cache, ~/sibnn-runs) lives here
    home.mkdir()

    # 1. the first driver: stopped (ray job stop's SIGTERM) once two epochs are in MLflow
    proc, ray_tmp = _job(spec, "s3resume", mlflow_uri, env, home, tmp_path / "run1.log")
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            runs = tracking.trial_runs(c, "s3resume")
            if runs and len(tracking.logged_epochs(c, runs[0].info.run_id)) >= 2:
                break
            assert proc.alive(), proc.log_tail()
            time.sleep(0.5)
        else:
            pytest.fail("the first run logged two epochs too late")
        os.killpg(proc.proc.pid, signal.SIGTERM)
        assert proc.proc.wait(60) == 143, proc.log_tail()
    finally:
        proc.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    first_epochs = tracking.logged_epochs(c, tracking.trial_runs(c, "s3resume")[0].info.run_id)
    assert max(first_epochs) < epochs, "stopped before the end"

    keys = _keys(client, "runs/")
    assert any(k.startswith(f"runs/{tracking.experiment_name('s3resume')}/") for k in keys), keys  # Tune state
    ckpts = [k for k in keys if k.startswith(f"runs/s3resume-{trial.trial_id}/checkpoint_")
             and k.endswith("/checkpoint.pt")]
    assert ckpts, keys
    # nothing was written to a local folder named after the URI (the old Path bug: "s3:/sibnn-test/runs")
    for root in (tmp_path, home):
        assert not list(root.rglob("checkpoint.pt")), "checkpoints must not land on the local disk"
        assert not list(root.rglob("s3:")), "the URI was taken for a local path"

    # 2. a fresh machine: the local folders are gone
    shutil.rmtree(home)
    home.mkdir()

    proc, ray_tmp = _job(spec, "s3resume", mlflow_uri, env, home, tmp_path / "run2.log")
    try:
        assert proc.proc.wait(600) == 0, proc.log_tail()
    finally:
        proc.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    out = (tmp_path / "run2.log").read_text()
    resumed = [int(line.rsplit(" ", 1)[1]) for line in out.splitlines()
               if f"sibnn: {trial.trial_id} resumes from its checkpoint after epoch" in line]
    assert resumed and 1 <= resumed[0] <= epochs, out[-3000:]  # from S3: nothing local was left to resume from
    (run,) = tracking.trial_runs(c, "s3resume")
    steps = sorted(m.step for m in c.get_metric_history(run.info.run_id, "val_top1"))
    assert steps == list(range(1, epochs + 1)), "every epoch exactly once"
    assert run.info.status == "FINISHED"
    best = run.data.tags[tracking.TAG_BEST_CHECKPOINT]
    assert best.startswith(f"s3://{BUCKET}/runs/s3resume-{trial.trial_id}/checkpoint_"), best
    assert f"{best.removeprefix(f's3://{BUCKET}/')}/checkpoint.pt" in _keys(client, "runs/")
