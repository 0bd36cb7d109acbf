"""Every read and write of the service's tables (experiments, attempts, idempotency keys) in one place.

Each method is one short transaction of its own and returns detached rows (``expire_on_commit=False``), so no
session outlives a call into Ray or MLflow. State changes are conditional UPDATEs on (status, attempt): the
reconciler, a cancel request and a second API replica never overwrite each other. The active-experiment limit is
counted and inserted under ``db.lock_experiment_creation`` (PostgreSQL advisory lock / SQLite write lock).
"""
from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service import db
from service.db import ACTIVE, Attempt, Experiment, IdempotencyKey, utcnow
from service.errors import Conflict, InvalidInput, LimitReached

ABANDONED_KEY_S = 120  # an Idempotency-Key whose request died this long ago without an experiment is reusable


class Store:
    def __init__(self, sessions: sessionmaker):
        self.sessions = sessions

    # --- reads ----------------------------------------------------------------------------------------------------

    def get(self, exp_id: str) -> Experiment | None:
        with self.sessions() as s:
            return s.get(Experiment, exp_id)

    def page(self, status: str | None, limit: int, offset: int) -> tuple[int, Sequence[Experiment]]:
        """(total, one page newest first) of the experiments, all or those with ``status``."""
        with self.sessions() as s:
            q, n = select(Experiment), select(func.count()).select_from(Experiment)
            if status is not None:
                q, n = q.where(Experiment.status == status), n.where(Experiment.status == status)
            items = s.scalars(q.order_by(Experiment.created_at.desc(), Experiment.id).offset(offset).limit(limit))
            return s.scalar(n), items.all()

    def active_ids(self) -> list[str]:
        with self.sessions() as s:
            return list(s.scalars(select(Experiment.id).where(Experiment.status.in_(ACTIVE))
                                  .order_by(Experiment.created_at)))

    def cancelled_still_stopping(self, limit: int = 100) -> list[tuple[str, int, str]]:
        """(experiment id, attempt, submission id) of cancelled experiments whose Ray job was last seen running."""
        with self.sessions() as s:
            return [tuple(r) for r in s.execute(
                select(Attempt.experiment_id, Attempt.number, Attempt.submission_id)
                .join(Experiment, (Experiment.id == Attempt.experiment_id) & (Experiment.attempt == Attempt.number))
                .where(Experiment.status == db.CANCELLED, Attempt.ray_status.in_(("PENDING", "RUNNING")))
                .limit(limit))]

    # --- create ---------------------------------------------------------------------------------------------------

    def claim_key(self, key: str, fingerprint: str) -> Experiment | None:
        """Take ``key`` for a request with body ``fingerprint``: None when taken (go on and create), the experiment
        it created before when replayed; refused (InvalidInput, Conflict) when the key cannot be used."""
        with self.sessions() as s:
            row = s.get(IdempotencyKey, key)
            if row is not None and row.experiment_id is None and row.fingerprint == fingerprint and \
                    (utcnow() - row.created_at).total_seconds() > ABANDONED_KEY_S:
                s.delete(row)  # the request that took it died before creating anything
                s.commit()
                row = None
            if row is not None:
                return _replay(s, row, fingerprint)
            s.add(IdempotencyKey(key=key, fingerprint=fingerprint))
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                row = s.get(IdempotencyKey, key)
                if row is None:
                    raise Conflict("a concurrent request with this Idempotency-Key is being processed") from None
                return _replay(s, row, fingerprint)
            return None

    def insert_experiment(self, exp_id: str, *, name: str, spec_json: str, fingerprint: str, n_trials: int,
                          max_active: int) -> None:
        """A PENDING experiment with its first attempt, unless ``max_active`` experiments are already active
        (LimitReached): the count and the insert hold the creation lock, so concurrent requests (processes,
        replicas) never exceed the limit."""
        with self.sessions() as s:
            db.lock_experiment_creation(s)  # held until the commit: no other request counts in between
            active = s.scalar(select(func.count()).select_from(Experiment).where(Experiment.status.in_(ACTIVE)))
            if active >= max_active:
                s.rollback()
                raise LimitReached(f"{active} experiments are pending or running (the limit is {max_active}); "
                                   "retry when one has finished", retry_after=30)
            exp = Experiment(id=exp_id, name=name, spec_json=spec_json, spec_fingerprint=fingerprint,
                             n_trials=n_trials, status=db.PENDING, attempt=1, cancel_requested=False)
            exp.attempts.append(Attempt(number=1, submission_id=db.submission_id(exp_id, 1)))
            s.add(exp)
            s.commit()

    def bind_key(self, key: str, exp_id: str) -> None:
        with self.sessions() as s:
            s.execute(update(IdempotencyKey).where(IdempotencyKey.key == key).values(experiment_id=exp_id))
            s.commit()

    def forget_key(self, key: str) -> None:
        with self.sessions() as s:
            s.execute(delete(IdempotencyKey).where(IdempotencyKey.key == key))
            s.commit()

    def delete_experiment(self, exp_id: str) -> None:
        with self.sessions() as s:
            s.execute(delete(Attempt).where(Attempt.experiment_id == exp_id))
            s.execute(delete(Experiment).where(Experiment.id == exp_id))
            s.commit()

    def record_submission(self, exp_id: str, attempt: int, mlflow_experiment_id: str, parent_run_id: str) -> None:
        with self.sessions() as s:
            s.execute(update(Experiment).where(Experiment.id == exp_id)
                      .values(mlflow_experiment_id=mlflow_experiment_id, mlflow_parent_run_id=parent_run_id))
            s.execute(update(Attempt).where(Attempt.experiment_id == exp_id, Attempt.number == attempt)
                      .values(submitted_at=utcnow()))
            s.commit()

    # --- state changes --------------------------------------------------------------------------------------------

    def request_cancel(self, exp_id: str) -> Experiment | None:
        """Mark an active experiment's cancellation requested; the experiment as it now is (None: no such one)."""
        with self.sessions() as s:
            exp = s.get(Experiment, exp_id)
            if exp is not None and exp.status in ACTIVE:
                exp.cancel_requested = True
                s.commit()
            return exp

    def transition(self, exp_id: str, attempt: int, *, status: str, reason: str | None,
                   started: bool = False, finished: bool = False) -> bool:
        """Set status (and reason, start/finish time) only if the experiment is still active on ``attempt``."""
        values = {"status": status, "reason": reason}
        if started:
            values["started_at"] = utcnow()
        if finished:
            values["finished_at"] = utcnow()
        with self.sessions() as s:
            res = s.execute(update(Experiment).where(Experiment.id == exp_id, Experiment.attempt == attempt,
                                                     Experiment.status.in_(ACTIVE)).values(**values))
            s.commit()
            return res.rowcount == 1

    def record_ray_state(self, exp_id: str, attempt: int, status: str, message: str | None, ended: bool) -> None:
        with self.sessions() as s:
            s.execute(update(Attempt).where(Attempt.experiment_id == exp_id, Attempt.number == attempt)
                      .values(ray_status=status, message=message, ended_at=utcnow() if ended else None))
            s.commit()

    def next_attempt(self, exp_id: str, attempt: int, reason: str) -> bool:
        """Attempt ``attempt`` was lost: mark it LOST and make ``attempt + 1`` current (PENDING, not submitted).
        False when the experiment is no longer active on ``attempt`` (someone else moved it)."""
        with self.sessions() as s:
            res = s.execute(update(Experiment).where(Experiment.id == exp_id, Experiment.attempt == attempt,
                                                     Experiment.status.in_(ACTIVE))
                            .values(attempt=attempt + 1, status=db.PENDING, reason=reason))
            if res.rowcount != 1:
                s.rollback()
                return False
            s.execute(update(Attempt).where(Attempt.experiment_id == exp_id, Attempt.number == attempt)
                      .values(ray_status="LOST", ended_at=utcnow()))
            s.add(Attempt(experiment_id=exp_id, number=attempt + 1,
                          submission_id=db.submission_id(exp_id, attempt + 1)))
            s.commit()
            return True


def _replay(s: Session, key: IdempotencyKey, fingerprint: str) -> Experiment:
    if key.fingerprint != fingerprint:
        raise InvalidInput("Idempotency-Key", "used before with a different body", title="Idempotency-Key reused",
                           detail="this Idempotency-Key was used with a different request body; use a new key")
    if key.experiment_id is None:
        raise Conflict("a request with this Idempotency-Key is still being processed; retry in a moment",
                       retry_after=2)
    exp = s.get(Experiment, key.experiment_id)
    if exp is None:
        raise Conflict("the experiment created with this Idempotency-Key no longer exists; use a new key")
    return exp
