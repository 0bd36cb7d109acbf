"""After the Ray cluster restarts mid-run, the experiment is resubmitted as attempt 2 and resumes from the trials'
checkpoints: every trial ends FINISHED in its one MLflow run, with no epoch missing."""
import time

import pytest

from jobs import tracking
from console import stack
from tests.service.conftest import AUTH, api_client, live_settings, small_digits, wait_status

pytestmark = pytest.mark.slow
EPOCHS = 4


def test_a_ray_restart_mid_run_resubmits_the_next_attempt_which_resumes(servers, tmp_path):
    head = stack.start_ray_head(tmp_path / "ray1", num_cpus=2, timeout=180)
    try:
        settings = live_settings(servers, tmp_path, ray_address=head.dashboard_url, ray_auth_token=head.token)
        with api_client(settings) as api:
            r = api.post("/experiments", json=small_digits("ray restart", epochs=EPOCHS), headers=AUTH)
            assert r.status_code == 202, r.text
            exp_id = r.json()["id"]
            deadline = time.monotonic() + 240
            while True:  # until a trial has a checkpoint to resume from
                exp = api.get(f"/experiments/{exp_id}").json()
                if any(t["epoch"] >= 2 for t in exp["trials"] or []):
                    break
                assert exp["status"] in ("PENDING", "RUNNING") and time.monotonic() < deadline, exp
                time.sleep(1)

            stack.stop_ray_head(head)  # the whole cluster goes away, job and all
            head = stack.start_ray_head(tmp_path / "ray2", token=head.token, num_cpus=2, ports=head.ports,
                                        timeout=180)

            done = wait_status(lambda: api.get(f"/experiments/{exp_id}").json(), ("SUCCEEDED",), timeout=420)
            assert done["attempt"] == 2
            assert [a["ray_status"] for a in done["attempts"]] == ["LOST", "SUCCEEDED"]
            assert {t["state"] for t in done["trials"]} == {"FINISHED"}
    finally:
        stack.stop_ray_head(head)
    c = tracking.client(servers.mlflow.url)
    runs = tracking.trial_runs(c, exp_id)
    assert len(runs) == 2  # resumed by tag, not duplicated
    for run in runs:
        steps = sorted(m.step for m in c.get_metric_history(run.info.run_id, "val_top1"))
        assert set(steps) == set(range(1, EPOCHS + 1)), (run.data.tags[tracking.TAG_TRIAL], steps)
        # resumed, not restarted: at most the epoch that was in flight when the cluster died is trained (and
        # logged) again; a restart from scratch would repeat every epoch already done
        assert len(steps) <= EPOCHS + 1, (run.data.tags[tracking.TAG_TRIAL], steps)
