"""``GET /experiments/{id}/logs?follow=true`` streams through Ray's ``tail_job_logs``: the long log already written
is downloaded once (one ``get_job_logs``), then only new lines arrive, each exactly once, until the job ends."""
from __future__ import annotations

import sys
import time

import pytest
from ray.job_submission import JobSubmissionClient

from service import db
from service.ray_jobs import RayJobs
from tests.service.conftest import api_client, live_settings

pytestmark = pytest.mark.slow

LINES = 40_000  # ≈ 0.6 MB: re-downloading it every second is what the stream must not do

SCRIPT = (f"import time\nfor i in range({LINES}): print(f'line {{i:06d}} ' + 'x' * 8)\n"
          "import sys; sys.stdout.flush(); time.sleep(6)\nprint('after the pause', flush=True)\ntime.sleep(1)\n")


def test_follow_sends_each_line_once_and_fetches_the_long_log_once(servers, tmp_path, monkeypatch):
    settings = live_settings(servers, tmp_path)
    calls = []
    real_logs = RayJobs.logs

    def counting_logs(self, sid):
        calls.append(sid)
        return real_logs(self, sid)

    monkeypatch.setattr(RayJobs, "logs", counting_logs)
    with api_client(settings, reconcile=False) as api:
        with api.app.state.ctx.sessions() as s:
            s.add(db.ExperimentRow(id="logsfollow", name="logs", spec_json="{}", spec_fingerprint="x", n_trials=1,
                                   status=db.RUNNING, attempt=1))
            s.commit()
        script = tmp_path / "long_log.py"
        script.write_text(SCRIPT)
        ray = JobSubmissionClient(servers.ray.dashboard_url,
                                  headers={"Authorization": f"Bearer {servers.ray.token}"})
        sid = db.submission_id("logsfollow", 1)
        ray.submit_job(entrypoint=f"{sys.executable} {script}", submission_id=sid)
        deadline = time.monotonic() + 120
        while f"line {LINES - 1:06d}" not in ray.get_job_logs(sid):  # the long part is written, the job sleeps
            assert time.monotonic() < deadline, ray.get_job_logs(sid)[-2000:]
            time.sleep(0.5)
        with api.stream("GET", "/experiments/logsfollow/logs", params={"follow": "true", "tail": 0}) as r:
            assert r.status_code == 200
            body = "".join(r.iter_text())
    assert calls == [sid], "the log was downloaded once, not polled"
    for i in (0, LINES // 2, LINES - 1):
        assert body.count(f"line {i:06d} ") == 1
    assert body.count("after the pause") == 1, body[-500:]  # the line written while the stream was open
    assert body.index(f"line {LINES - 1:06d}") < body.index("after the pause")
    assert body.rstrip().endswith(f"[sibnn: job {sid} SUCCEEDED]")
