"""The reconciler keeps status in step with Ray; a job the cluster forgot (it restarted) is resubmitted."""
import datetime as dt

import pytest

from jobs.spec import parse_spec
from service import db
from service.db import AttemptRow, ExperimentRow
from service.experiments import Context, cancel_experiment, reconcile_once
from tests.service.conftest import cancel_and_wait, live_settings, ray_job_status, small_digits

pytestmark = pytest.mark.slow


def _running_experiment(ctx: Context, exp_id: str, attempt: int = 1, cancelled: bool = False):
    """An experiment that was RUNNING on a Ray cluster which has since restarted (Ray does not know its job);
    ``cancelled``: one cancelled while its job was last seen running."""
    spec = parse_spec(small_digits("lost", epochs=50))
    with ctx.sessions() as s:
        s.add(ExperimentRow(id=exp_id, name=spec.name, spec_json=spec.model_dump_json(),
                            spec_fingerprint=spec.fingerprint(), n_trials=2,
                            status=db.CANCELLED if cancelled else db.RUNNING, attempt=attempt,
                            cancel_requested=cancelled))
        s.add(AttemptRow(experiment_id=exp_id, number=attempt, submission_id=db.submission_id(exp_id, attempt),
                         submitted_at=db.utcnow() - dt.timedelta(minutes=5), ray_status="RUNNING" if cancelled else None))
        s.commit()
    return spec


def test_a_job_the_cluster_forgot_is_resubmitted_as_the_next_attempt(servers, tmp_path):
    ctx = Context.from_settings(live_settings(servers, tmp_path))
    _running_experiment(ctx, "lostjob1")
    assert reconcile_once(ctx) == 1
    with ctx.sessions() as s:
        exp = s.get(ExperimentRow, "lostjob1")
        assert (exp.attempt, exp.status) == (2, db.PENDING)
        assert "lost attempt 1" in exp.reason
        assert [(a.number, a.ray_status, a.submitted_at is not None) for a in exp.attempts] == [
            (1, "LOST", True), (2, None, True)]
    assert ray_job_status(servers, "lostjob1-2") in ("PENDING", "RUNNING")
    cancel_and_wait(servers, lambda: cancel_experiment(ctx, "lostjob1"), "lostjob1-2")  # free the cluster
    ctx.engine.dispose()


def test_after_max_attempts_a_lost_job_fails_with_the_reason(servers, tmp_path):
    ctx = Context.from_settings(live_settings(servers, tmp_path, max_attempts=2))
    _running_experiment(ctx, "lostjob2", attempt=2)
    reconcile_once(ctx)
    with ctx.sessions() as s:
        exp = s.get(ExperimentRow, "lostjob2")
        assert exp.status == db.FAILED and "lost the job 2 times" in exp.reason
        assert exp.finished_at is not None
    ctx.engine.dispose()


def test_a_cancelled_job_that_ended_leaves_no_mlflow_run_running(servers, tmp_path):
    """A driver Ray killed before its SIGTERM handler ended the MLflow runs: the reconciler ends them once Ray
    says the job is over, and leaves finished runs alone."""
    from jobs import tracking

    ctx = Context.from_settings(live_settings(servers, tmp_path))
    spec = _running_experiment(ctx, "killedjob", cancelled=True)
    c = tracking.client(servers.mlflow.url)
    parent = tracking.ensure_parent_run(c, "killedjob", spec)
    c.update_run(parent, status="RUNNING")
    running, done = (tracking.ensure_trial_run(c, "killedjob", parent, spec, t) for t in spec.trials()[:2])
    tracking.set_trial_state(c, running, "RUNNING")
    tracking.set_trial_state(c, done, "FINISHED")
    reconcile_once(ctx)
    assert [c.get_run(r).info.status for r in (parent, running, done)] == ["KILLED", "KILLED", "FINISHED"]
    assert c.get_run(running).data.tags[tracking.TAG_STATE] == "KILLED"
    with ctx.sessions() as s:
        assert s.get(ExperimentRow, "killedjob").attempts[0].ray_status == "LOST"  # recorded: not asked again
    assert tracking.mark_killed(c, "killedjob") == 0
    ctx.engine.dispose()
