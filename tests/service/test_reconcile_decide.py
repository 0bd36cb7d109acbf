"""Every branch of the reconciler's decision (``service.reconcile.decide``), without Ray, MLflow or a database.

The end-to-end tests (test_reconciler.py, test_lifecycle.py, test_ray_restart.py) show the decision applied
against a live cluster; this table pins what it is for each combination of inputs."""
import pytest

from service.reconcile import CANCELLED_BY_REQUEST, Action, Decision, Limits, Ray, Seen, decide
from service.ray_jobs import JobState

LIMITS = Limits(max_attempts=3)


def seen(status="RUNNING", attempt=1, cancel=False, submitted=True) -> Seen:
    return Seen("e1", status, attempt, cancel, submitted)


def job(status, message=None, exit_code=None) -> JobState:
    return JobState("e1-1", status, message, "raysubmit_1", exit_code)


SET = Action.SET_STATUS
CASES = {
    # accepted, not yet in Ray: the reconciler submits it at once (the API never does), or honours a cancel
    "unsubmitted": (seen("PENDING", submitted=False), Ray.NOT_ASKED, Decision(Action.SUBMIT)),
    "unsubmitted, next attempt": (seen("PENDING", attempt=2, submitted=False), Ray.NOT_ASKED,
                                  Decision(Action.SUBMIT)),
    "unsubmitted, cancel": (seen("PENDING", cancel=True, submitted=False), Ray.NOT_ASKED,
                            Decision(SET, "CANCELLED", CANCELLED_BY_REQUEST, finished=True)),
    # Ray cannot be asked: the pass stops
    "ray unreachable": (seen(), Ray.UNREACHABLE, Decision(Action.HALT)),
    # Ray forgot the job (cluster restart)
    "lost": (seen(), Ray.LOST,
             Decision(Action.NEXT_ATTEMPT, "PENDING", "resubmitted: the Ray cluster lost attempt 1")),
    "lost, second attempt": (seen(attempt=2), Ray.LOST,
                             Decision(Action.NEXT_ATTEMPT, "PENDING", "resubmitted: the Ray cluster lost attempt 2")),
    "lost, attempts used up": (seen(attempt=3), Ray.LOST,
                               Decision(SET, "FAILED", "the Ray cluster lost the job 3 times (restarts); giving up",
                                        finished=True)),
    "lost, cancel": (seen(attempt=3, cancel=True), Ray.LOST,
                     Decision(SET, "CANCELLED", CANCELLED_BY_REQUEST, finished=True)),
    # cancel requested
    "cancel, job pending": (seen("PENDING", cancel=True), job("PENDING"), Decision(Action.STOP_JOB)),
    "cancel, job running": (seen(cancel=True), job("RUNNING"), Decision(Action.STOP_JOB)),
    "cancel, job stopped": (seen(cancel=True), job("STOPPED"),
                            Decision(SET, "CANCELLED", CANCELLED_BY_REQUEST, finished=True)),
    "cancel, job failed": (seen(cancel=True), job("FAILED", "killed"),
                           Decision(SET, "CANCELLED", CANCELLED_BY_REQUEST, finished=True)),
    "cancel, job succeeded first": (seen(cancel=True), job("SUCCEEDED"), Decision(SET, "SUCCEEDED", finished=True)),
    # Ray's status followed
    "pending → running": (seen("PENDING"), job("RUNNING"), Decision(SET, "RUNNING", started=True)),
    "still pending": (seen("PENDING"), job("PENDING"), Decision(Action.NOTHING)),
    "still running": (seen(), job("RUNNING"), Decision(Action.NOTHING)),
    "running → pending again": (seen(), job("PENDING"), Decision(SET, "PENDING")),
    "succeeded": (seen(), job("SUCCEEDED"), Decision(SET, "SUCCEEDED", finished=True)),
    "pending → succeeded": (seen("PENDING"), job("SUCCEEDED"), Decision(SET, "SUCCEEDED", finished=True)),
    "stopped outside the service": (seen(), job("STOPPED"),
                                    Decision(SET, "FAILED", "the Ray job e1-1 was stopped outside the service",
                                             finished=True)),
    "failed with message and exit code": (
        seen(), job("FAILED", "\x1b[31mTraceback ... ValueError: bad\x1b[0m", exit_code=1),
        Decision(SET, "FAILED", "Ray job e1-1 failed: Traceback ... ValueError: bad (exit code 1); "
                                "full log: /experiments/e1/logs", finished=True)),
    "failed without message": (seen(attempt=2), job("FAILED"),
                               Decision(SET, "FAILED", "Ray job e1-2 failed: no message; "
                                                       "full log: /experiments/e1/logs", finished=True)),
    "unknown Ray status": (seen(), job("SOMETHING_NEW"), Decision(Action.NOTHING)),
    # the reconciler only acts on active experiments
    "already terminal": (seen("SUCCEEDED"), job("FAILED"), Decision(Action.NOTHING)),
    "already cancelled, job lost": (seen("CANCELLED", cancel=True), Ray.LOST, Decision(Action.NOTHING)),
}


@pytest.mark.parametrize("given, ray, want", CASES.values(), ids=CASES.keys())
def test_decide(given, ray, want):
    assert decide(given, ray, LIMITS) == want


def test_an_unsubmitted_attempt_is_never_asked_about_even_if_a_state_is_passed():
    """``submitted=False`` wins over a state: a job Ray knows under the id is submitted again (a no-op in Ray)."""
    assert decide(seen("PENDING", submitted=False), job("RUNNING"), LIMITS) == Decision(Action.SUBMIT)


def test_one_attempt_gives_up_at_the_first_loss():
    strict = Limits(max_attempts=1)
    assert decide(seen(attempt=1), Ray.LOST, strict).status == "FAILED"


def test_every_action_is_reached_by_some_case():
    reached = {want.action for _, _, want in CASES.values()}
    assert reached == set(Action)
