"""Every read and write of the service's tables (experiments, attempts, idempotency keys) in one place.

Each method is one short transaction of its own and returns detached rows (``expire_on_commit=False``), so no
session outlives a call into Ray or MLflow. State changes are conditional UPDATEs on (status, attempt): the
reconciler, a cancel request and a second API replica never overwrite each other. The active-experiment limit is
counted and inserted under ``db.lock_experiment_creation`` (PostgreSQL advisory lock / SQLite write lock).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Iterator, Sequence

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, joinedload, sessionmaker

from service import db
from service.db import ACTIVE, AttemptRow, ExperimentRow, IdempotencyKeyRow, utcnow
from service.errors import Conflict, InvalidInput, LimitReached

WAITING = "not submitted yet: "  # the reason of a PENDING experiment whose submission failed and is retried


class KeyLocks:
    """One lock per ``Idempotency-Key`` in flight in this process: concurrent requests with one key go one at a
    time, so a burst of retries makes one trip through the creation lock and the rest replay what it made (without
    it, every request of a burst misses the replay lookup and queues on the database's creation lock). Across
    processes and replicas the creation lock alone keeps one experiment per key."""

    def __init__(self):
        self._guard = threading.Lock()
        self._held: dict[str, list] = {}  # key -> [its lock, requests holding or waiting for it]

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            entry = self._held.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._held[key]


class Store:
    def __init__(self, sessions: sessionmaker):
        self.sessions = sessions
        self.key_locks = KeyLocks()

    # --- reads ----------------------------------------------------------------------------------------------------

    def get(self, exp_id: str) -> ExperimentRow | None:
        with self.sessions() as s:
            return s.get(ExperimentRow, exp_id)

    def page(self, status: str | None, limit: int, offset: int) -> tuple[int, Sequence[ExperimentRow]]:
        """(total, one page newest first) of the experiments, all or those with ``status``."""
        with self.sessions() as s:
            q, n = select(ExperimentRow), select(func.count()).select_from(ExperimentRow)
            if status is not None:
                q, n = q.where(ExperimentRow.status == status), n.where(ExperimentRow.status == status)
            items = s.scalars(q.order_by(ExperimentRow.created_at.desc(), ExperimentRow.id).offset(offset).limit(limit))
            return s.scalar(n), items.all()

    def active_ids(self) -> list[str]:
        with self.sessions() as s:
            return list(s.scalars(select(ExperimentRow.id).where(ExperimentRow.status.in_(ACTIVE))
                                  .order_by(ExperimentRow.created_at)))

    def cancelled_still_stopping(self, limit: int = 100) -> list[tuple[str, int, str]]:
        """(experiment id, attempt, submission id) of cancelled experiments whose Ray job was last seen running."""
        with self.sessions() as s:
            return [tuple(r) for r in s.execute(
                select(AttemptRow.experiment_id, AttemptRow.number, AttemptRow.submission_id)
                .join(ExperimentRow, (ExperimentRow.id == AttemptRow.experiment_id)
                      & (ExperimentRow.attempt == AttemptRow.number))
                .where(ExperimentRow.status == db.CANCELLED, AttemptRow.ray_status.in_(("PENDING", "RUNNING")))
                .limit(limit))]

    # --- create ---------------------------------------------------------------------------------------------------

    def create(self, exp_id: str, *, key: str | None, fingerprint: str, name: str, spec_json: str, n_trials: int,
               max_active: int) -> tuple[ExperimentRow, bool]:
        """A PENDING experiment with its first attempt (not submitted) and its ``Idempotency-Key``, in one
        transaction: (experiment, True). A key used before with this body: (its experiment, False); with another
        body: InvalidInput. ``max_active`` experiments already active: LimitReached.

        The key check, the count and the insert hold the creation lock (``db.lock_experiment_creation``), so
        concurrent requests with one key (processes, replicas) make one experiment, and the active limit holds;
        no key row ever exists without its experiment, so no request waits on another's; in this process requests
        with one key also go one at a time (``KeyLocks``)."""
        if key is None:
            return self._create(exp_id, key=None, fingerprint=fingerprint, name=name, spec_json=spec_json,
                                n_trials=n_trials, max_active=max_active)
        with self.key_locks.hold(key):
            return self._create(exp_id, key=key, fingerprint=fingerprint, name=name, spec_json=spec_json,
                                n_trials=n_trials, max_active=max_active)

    def _create(self, exp_id: str, *, key: str | None, fingerprint: str, name: str, spec_json: str, n_trials: int,
                max_active: int) -> tuple[ExperimentRow, bool]:
        if key is not None:  # a replay needs no lock: a key row is only ever written with its experiment
            with self.sessions() as s:
                # One round trip for the key, its experiment and the attempts (a burst of retries is mostly this).
                found = s.execute(select(ExperimentRow, IdempotencyKeyRow.fingerprint)
                                  .join(IdempotencyKeyRow, IdempotencyKeyRow.experiment_id == ExperimentRow.id)
                                  .where(IdempotencyKeyRow.key == key)
                                  .options(joinedload(ExperimentRow.attempts))).unique().first()
                if found is not None:
                    if found.fingerprint != fingerprint:
                        raise _reused_key()
                    return found.ExperimentRow, False
        with self.sessions() as s:
            db.lock_experiment_creation(s)  # held until the commit or rollback
            if key is not None and (row := s.get(IdempotencyKeyRow, key)) is not None:
                if row.experiment_id is not None or row.fingerprint != fingerprint:
                    return _replay(s, row, fingerprint), False
                s.delete(row)  # a key an older version took for a request that then failed: nothing was made
                s.flush()
            active = s.scalar(select(func.count()).select_from(ExperimentRow).where(ExperimentRow.status.in_(ACTIVE)))
            if active >= max_active:
                s.rollback()
                raise LimitReached(f"{active} experiments are pending or running (the limit is {max_active}); "
                                   "retry when one has finished", retry_after=30)
            exp = ExperimentRow(id=exp_id, name=name, spec_json=spec_json, spec_fingerprint=fingerprint,
                                n_trials=n_trials, status=db.PENDING, attempt=1, cancel_requested=False)
            exp.attempts.append(AttemptRow(number=1, submission_id=db.submission_id(exp_id, 1)))
            s.add(exp)
            s.flush()
            if key is not None:
                s.add(IdempotencyKeyRow(key=key, fingerprint=fingerprint, experiment_id=exp_id))
            s.commit()
        return self.get(exp_id), True

    # --- submission, step by step ---------------------------------------------------------------------------------

    def claim_submission(self, exp_id: str, attempt: int, lease_s: float) -> bool:
        """Take the right to submit ``attempt`` for ``lease_s`` seconds (False: it is submitted, no longer current,
        or another reconciler holds it). A reconciler that dies mid-submission loses its claim when the lease ends."""
        now = utcnow()
        with self.sessions() as s:
            res = s.execute(update(AttemptRow).where(
                AttemptRow.experiment_id == exp_id, AttemptRow.number == attempt, AttemptRow.submitted_at.is_(None),
                AttemptRow.submit_claimed_at.is_(None)
                | (AttemptRow.submit_claimed_at < now - dt.timedelta(seconds=lease_s)))
                .values(submit_claimed_at=now))
            s.commit()
            return res.rowcount == 1

    def release_submission(self, exp_id: str, attempt: int, why: str) -> None:
        """The submission failed: give the claim back (the next pass retries) and say why in the status."""
        with self.sessions() as s:
            s.execute(update(AttemptRow).where(AttemptRow.experiment_id == exp_id, AttemptRow.number == attempt)
                      .values(submit_claimed_at=None))
            s.execute(update(ExperimentRow).where(ExperimentRow.id == exp_id, ExperimentRow.attempt == attempt,
                                                  ExperimentRow.status == db.PENDING)
                      .values(reason=f"{WAITING}{why}"))
            s.commit()

    def record_mlflow(self, exp_id: str, mlflow_experiment_id: str, parent_run_id: str) -> None:
        """Step 1 done: the MLflow experiment and parent run exist (every later attempt reuses them)."""
        with self.sessions() as s:
            s.execute(update(ExperimentRow).where(ExperimentRow.id == exp_id)
                      .values(mlflow_experiment_id=mlflow_experiment_id, mlflow_parent_run_id=parent_run_id))
            s.commit()

    def record_submitted(self, exp_id: str, attempt: int) -> None:
        """Step 2 done: Ray has the attempt's job. A waiting reason the submitter left is cleared."""
        with self.sessions() as s:
            s.execute(update(AttemptRow).where(AttemptRow.experiment_id == exp_id, AttemptRow.number == attempt)
                      .values(submitted_at=utcnow()))
            s.execute(update(ExperimentRow).where(ExperimentRow.id == exp_id, ExperimentRow.reason.startswith(WAITING))
                      .values(reason=None))
            s.commit()

    # --- state changes --------------------------------------------------------------------------------------------

    def request_cancel(self, exp_id: str) -> ExperimentRow | None:
        """Mark an active experiment's cancellation requested; the experiment as it now is (None: no such one)."""
        with self.sessions() as s:
            exp = s.get(ExperimentRow, exp_id)
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
            res = s.execute(update(ExperimentRow).where(ExperimentRow.id == exp_id, ExperimentRow.attempt == attempt,
                                                        ExperimentRow.status.in_(ACTIVE)).values(**values))
            s.commit()
            return res.rowcount == 1

    def record_ray_state(self, exp_id: str, attempt: int, status: str, message: str | None, ended: bool) -> None:
        with self.sessions() as s:
            s.execute(update(AttemptRow).where(AttemptRow.experiment_id == exp_id, AttemptRow.number == attempt)
                      .values(ray_status=status, message=message, ended_at=utcnow() if ended else None))
            s.commit()

    def next_attempt(self, exp_id: str, attempt: int, reason: str) -> bool:
        """AttemptRow ``attempt`` was lost: mark it LOST and make ``attempt + 1`` current (PENDING, not submitted).
        False when the experiment is no longer active on ``attempt`` (someone else moved it)."""
        with self.sessions() as s:
            res = s.execute(update(ExperimentRow).where(ExperimentRow.id == exp_id, ExperimentRow.attempt == attempt,
                                                        ExperimentRow.status.in_(ACTIVE))
                            .values(attempt=attempt + 1, status=db.PENDING, reason=reason))
            if res.rowcount != 1:
                s.rollback()
                return False
            s.execute(update(AttemptRow).where(AttemptRow.experiment_id == exp_id, AttemptRow.number == attempt)
                      .values(ray_status="LOST", ended_at=utcnow()))
            s.add(AttemptRow(experiment_id=exp_id, number=attempt + 1,
                             submission_id=db.submission_id(exp_id, attempt + 1)))
            s.commit()
            return True


def _replay(s: Session, key: IdempotencyKeyRow, fingerprint: str) -> ExperimentRow:
    if key.fingerprint != fingerprint:
        raise _reused_key()
    exp = s.get(ExperimentRow, key.experiment_id)
    if exp is None:
        raise Conflict("the experiment created with this Idempotency-Key no longer exists; use a new key")
    return exp


def _reused_key() -> InvalidInput:
    return InvalidInput("Idempotency-Key", "used before with a different body", title="Idempotency-Key reused",
                        detail="this Idempotency-Key was used with a different request body; use a new key")
