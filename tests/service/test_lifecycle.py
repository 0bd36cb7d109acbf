"""The full lifecycle against a real Ray head (token auth), a real MLflow server and the jobs entrypoint."""
import os
import signal
import time

import httpx
import pytest
from typer.testing import CliRunner

from console import cli as cli_module
from jobs import tracking
from tests.service.conftest import (AUTH, api_client, live_settings, ray_job_status, small_digits,
                                    start_live_api, wait_status)

pytestmark = pytest.mark.slow


def test_a_digits_sweep_survives_an_api_kill_and_ends_succeeded_with_every_trial(servers, tmp_path):
    api = start_live_api(servers, tmp_path)
    spec = small_digits("lifecycle")
    try:
        r = httpx.post(f"{api.url}/experiments", json=spec, headers={**AUTH, "Idempotency-Key": "life-1"}, timeout=60)
        assert r.status_code == 202, r.text
        exp_id = r.json()["id"]
        assert r.headers["location"] == f"/experiments/{exp_id}"
        assert r.json()["status"] == "PENDING" and r.json()["ray_submission_id"] == f"{exp_id}-1"

        again = httpx.post(f"{api.url}/experiments", json=spec, headers={**AUTH, "Idempotency-Key": "life-1"},
                           timeout=60)
        assert (again.status_code, again.json()["id"]) == (202, exp_id)
        other = httpx.post(f"{api.url}/experiments", json=small_digits("other body"),
                           headers={**AUTH, "Idempotency-Key": "life-1"}, timeout=60)
        assert other.status_code == 422

        get = lambda: httpx.get(f"{api.url}/experiments/{exp_id}", timeout=30).json()  # noqa: E731
        running = wait_status(get, ("RUNNING",), timeout=120)
        assert [t["trial_id"] for t in running["trials"]] == ["digits_cnn-sibnn-rho0.3-s0", "digits_cnn-fp-s0"]

        os.killpg(api.server.pid, signal.SIGKILL)  # the API dies mid-run, nothing is shut down cleanly
        api.server.proc.wait(10)
    finally:
        api.stop()

    api2 = start_live_api(servers, tmp_path)  # same database, new process and port
    try:
        get = lambda: httpx.get(f"{api2.url}/experiments/{exp_id}", timeout=30).json()  # noqa: E731
        done = wait_status(get, ("SUCCEEDED",), timeout=420)
        assert done["attempt"] == 1 and done["ray_job_status"] == "SUCCEEDED" and done["reason"] is None
        assert {t["state"] for t in done["trials"]} == {"FINISHED"}
        assert all(t["epoch"] == 2 and t["mlflow_url"].startswith(servers.mlflow.url) for t in done["trials"])

        res = httpx.get(f"{api2.url}/experiments/{exp_id}/results", timeout=30).json()
        rows = {(r["binarizer"], r["rho"], r["seed"]): r for r in res["rows"]}
        assert set(rows) == {("sibnn", 0.3, 0), ("fp", None, 0)}
        for r in rows.values():
            assert r["arch"] == "digits_cnn" and r["state"] == "FINISHED" and r["epochs"] == 2
            assert 10.0 < r["final_top1"] <= 100.0 and r["best_top1"] >= r["final_top1"]
            assert r["final_top5"] >= r["final_top1"] and r["wall_time_s"] > 0 and r["images_per_s"] > 0
        assert 0.0 <= rows[("sibnn", 0.3, 0)]["sparsity"] <= 1.0
        # one MLflow run per trial: nothing was duplicated by the restart
        assert len(tracking.trial_runs(tracking.client(servers.mlflow.url), exp_id)) == 2

        logs = httpx.get(f"{api2.url}/experiments/{exp_id}/logs", params={"tail": 0}, timeout=30).text
        assert f"experiment {exp_id}" in logs
        table = httpx.get(f"{api2.url}/tables/paper-comparison", params={"experiment_id": exp_id}, timeout=30).json()
        assert {r["binarizer"] for r in table["rows"]} == {"sibnn", "fp"}

        env = {"SIBNN_API_URL": api2.url, "SIBNN_API_TOKEN": AUTH["Authorization"].split()[1]}
        out = CliRunner().invoke(cli_module.app, ["results", exp_id], env=env)
        assert out.exit_code == 0, out.output
        assert "digits_cnn-sibnn-rho0.3-s0" in out.output and "SUCCEEDED" in out.output
    finally:
        api2.stop()


def test_cancel_stops_the_ray_job_and_the_experiment_ends_cancelled(servers, tmp_path):
    settings = live_settings(servers, tmp_path)
    with api_client(settings) as api:
        r = api.post("/experiments", json=small_digits("to cancel", epochs=50), headers=AUTH)
        assert r.status_code == 202, r.text
        exp_id, sid = r.json()["id"], r.json()["ray_submission_id"]
        # wait until the job's driver runs (its first line is in the log): Ray then has a process to stop
        deadline = time.monotonic() + 120
        while f"experiment {exp_id}" not in api.get(f"/experiments/{exp_id}/logs").text:
            assert time.monotonic() < deadline, api.get(f"/experiments/{exp_id}/logs").text
            time.sleep(1)

        r = api.delete(f"/experiments/{exp_id}", headers=AUTH)
        assert r.status_code == 202
        assert (r.json()["status"], r.json()["reason"]) == ("CANCELLED", "cancelled by request")

        deadline = time.monotonic() + 60
        while (status := ray_job_status(servers, sid)) not in ("STOPPED", "FAILED", "SUCCEEDED"):
            assert time.monotonic() < deadline, status
            time.sleep(1)
        assert status == "STOPPED"
        time.sleep(2 * settings.reconcile_interval_s)  # the reconciler leaves a cancelled experiment alone
        exp = api.get(f"/experiments/{exp_id}").json()
        assert exp["status"] == "CANCELLED"
        assert api.delete(f"/experiments/{exp_id}", headers=AUTH).json()["status"] == "CANCELLED"  # idempotent
        parent = tracking.parent_run(tracking.client(servers.mlflow.url), exp_id)
        assert parent.info.status == "KILLED"


def test_a_cancel_right_after_submit_still_stops_the_job(servers, tmp_path):
    """A cancel right after the POST: CANCELLED, and no job is left running (the reconciler may or may not have
    submitted it yet). A cancel right after Ray got the job: Ray's stop_job does nothing while the job's supervisor
    does not exist yet, so the service keeps asking until Ray says STOPPED."""
    settings = live_settings(servers, tmp_path)
    with api_client(settings) as api:
        r = api.post("/experiments", json=small_digits("cancel at once", epochs=50), headers=AUTH)
        exp_id, sid = r.json()["id"], r.json()["ray_submission_id"]
        assert api.delete(f"/experiments/{exp_id}", headers=AUTH).json()["status"] == "CANCELLED"
        time.sleep(3 * settings.reconcile_interval_s)  # passes that would submit it if the cancel were ignored
        known = httpx.get(f"{servers.ray.dashboard_url}/api/jobs/{sid}",
                          headers={"Authorization": f"Bearer {servers.ray.token}"}, timeout=10)
        if known.status_code == 200:  # the reconciler had submitted it before the cancel: it must be stopped
            assert _wait_ray_end(servers, sid) == "STOPPED"
        else:
            assert known.status_code == 404, known.text

        r = api.post("/experiments", json=small_digits("cancel once in Ray", epochs=50), headers=AUTH)
        exp_id, sid = r.json()["id"], r.json()["ray_submission_id"]
        deadline = time.monotonic() + 60
        while api.get(f"/experiments/{exp_id}").json()["ray_job_status"] is None:  # the reconciler submits it
            assert time.monotonic() < deadline, "not submitted to Ray within 60 s"
            time.sleep(0.2)
        assert api.delete(f"/experiments/{exp_id}", headers=AUTH).status_code == 202
        assert _wait_ray_end(servers, sid) == "STOPPED"
        exp = wait_status(lambda: api.get(f"/experiments/{exp_id}").json(), ("CANCELLED",), timeout=30)
        assert exp["reason"] == "cancelled by request"


def _wait_ray_end(servers, sid: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while (status := ray_job_status(servers, sid)) not in ("STOPPED", "FAILED", "SUCCEEDED"):
        assert time.monotonic() < deadline, status
        time.sleep(1)
    return status
