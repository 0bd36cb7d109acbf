"""The reconciler's decision, as a pure function: what one active experiment should do, given what Ray says.

``decide(seen, ray, limits)`` reads no clock, database or network; ``service.experiments.reconcile_experiment``
gathers its inputs, calls it, and applies the ``Decision`` (a conditional UPDATE, a submit, a stop). Every branch
is pinned by tests/service/test_reconcile_decide.py without a cluster.

Experiment status (DESIGN.md "Experiment status") follows the Ray job of the current attempt:
PENDING → RUNNING → SUCCEEDED | FAILED | CANCELLED; a job the cluster no longer knows (it restarted) is resubmitted
as the next attempt until ``max_attempts``.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from service.db import ACTIVE, CANCELLED, FAILED, PENDING, RUNNING, SUCCEEDED, TERMINAL, submission_id
from service.ray_jobs import JobState, clean_message

CANCELLED_BY_REQUEST = "cancelled by request"
RAY_TO_STATUS = {"PENDING": PENDING, "RUNNING": RUNNING, "SUCCEEDED": SUCCEEDED, "FAILED": FAILED}


class Ray(enum.Enum):
    """What Ray said when there is no job state to show."""

    NOT_ASKED = "not asked"  # the attempt was never confirmed submitted: Ray is not asked about it
    LOST = "lost"  # Ray does not know the submission id (the cluster restarted)
    UNREACHABLE = "unreachable"  # Ray did not answer or refused the token


class Action(enum.Enum):
    NOTHING = "nothing"
    SUBMIT = "submit"  # submit the current attempt, step by step (a repeat is harmless: Ray's submission id)
    STOP_JOB = "stop job"  # cancel requested, job still running: ask Ray to stop it (again)
    SET_STATUS = "set status"  # conditional UPDATE of the experiment to ``status``
    NEXT_ATTEMPT = "next attempt"  # the old attempt is LOST; a new one is created PENDING and submitted
    HALT = "halt"  # Ray is unreachable: end this reconciler pass, the others would fail the same way


@dataclass(frozen=True)
class Seen:
    """The experiment as the database has it."""

    experiment_id: str
    status: str  # PENDING | RUNNING (the reconciler looks at active experiments only)
    attempt: int
    cancel_requested: bool
    submitted: bool  # the attempt's submitted_at is set (Ray accepted its job)


@dataclass(frozen=True)
class Limits:
    max_attempts: int


@dataclass(frozen=True)
class Decision:
    action: Action
    status: str | None = None  # the experiment's new status (SET_STATUS, NEXT_ATTEMPT)
    reason: str | None = None
    started: bool = False  # set started_at
    finished: bool = False  # set finished_at


NOTHING = Decision(Action.NOTHING)


def _set(status: str, reason: str | None) -> Decision:
    return Decision(Action.SET_STATUS, status, reason, started=status == RUNNING, finished=status in TERMINAL)


def failure_reason(seen: Seen, state: JobState) -> str:
    sid = submission_id(seen.experiment_id, seen.attempt)
    exit_code = f" (exit code {state.exit_code})" if state.exit_code is not None else ""
    return (f"Ray job {sid} failed: {clean_message(state.message) or 'no message'}{exit_code}; "
            f"full log: /experiments/{seen.experiment_id}/logs")


def decide(seen: Seen, ray: JobState | Ray, limits: Limits) -> Decision:
    """The one step that brings ``seen`` closer to what Ray says (``ray``: its job state, or why there is none)."""
    if seen.status not in ACTIVE:
        return NOTHING
    if ray is Ray.NOT_ASKED or not seen.submitted:
        # Accepted (or resubmitted as a new attempt) but not yet in Ray: the API never submits, the reconciler does.
        return _set(CANCELLED, CANCELLED_BY_REQUEST) if seen.cancel_requested else Decision(Action.SUBMIT)
    if ray is Ray.UNREACHABLE:
        return Decision(Action.HALT)
    if ray is Ray.LOST:
        if seen.cancel_requested:
            return _set(CANCELLED, CANCELLED_BY_REQUEST)
        if seen.attempt >= limits.max_attempts:
            return _set(FAILED, f"the Ray cluster lost the job {seen.attempt} times (restarts); giving up")
        return Decision(Action.NEXT_ATTEMPT, PENDING, f"resubmitted: the Ray cluster lost attempt {seen.attempt}")
    if seen.cancel_requested and not ray.terminal:
        # Ray signals only a job whose supervisor exists: repeat stop_job until it has started and stopped.
        return Decision(Action.STOP_JOB)
    if seen.cancel_requested and ray.status in ("STOPPED", "FAILED"):
        new, reason = CANCELLED, CANCELLED_BY_REQUEST
    elif ray.status == "STOPPED":
        new = FAILED
        reason = f"the Ray job {submission_id(seen.experiment_id, seen.attempt)} was stopped outside the service"
    else:
        new = RAY_TO_STATUS.get(ray.status, seen.status)  # an unknown Ray status changes nothing
        reason = failure_reason(seen, ray) if new == FAILED else None
    return NOTHING if new == seen.status else _set(new, reason)
