"""What the service does with an experiment: create and submit it, cancel it, describe it, keep it in step with Ray.

Blocking code only (SQLAlchemy sessions, ``JobSubmissionClient``, ``MlflowClient``): the API calls it from sync
endpoints (FastAPI's thread pool), the reconciler from a worker thread.

Status follows the Ray job of the experiment's current attempt (Ray ``submission_id`` = ``<id>-<attempt>``):
PENDING → RUNNING → SUCCEEDED | FAILED | CANCELLED. When the Ray cluster no longer knows the job (it restarted),
the experiment is resubmitted as a new attempt with the same experiment id, and the job resumes its trials from
their checkpoints and its MLflow runs by tag. Every transition is a conditional UPDATE on (status, attempt), so
the reconciler, a cancel request and a second API replica never overwrite each other.
"""
from __future__ import annotations

import concurrent.futures
import datetime as dt
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from mlflow.tracking import MlflowClient
from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from jobs import tracking
from jobs.spec import ExperimentSpec, parse_spec
from service import db
from service.db import ACTIVE, TERMINAL, Attempt, Experiment, IdempotencyKey, utcnow
from service.problems import Problem
from service.ray_jobs import JobNotFound, RayJobs, RayUnavailable, clean_message
from service.results import experiment_link, trial_status
from service.settings import Settings

log = logging.getLogger("service.experiments")
ABANDONED_KEY_S = 120  # an Idempotency-Key whose request died this long ago without an experiment is reusable


class MlflowUnavailable(RuntimeError):
    pass


@dataclass
class Context:
    """What every request and the reconciler share: settings, database, Ray and MLflow clients."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker
    ray: RayJobs = field(init=False)
    trials_cache: "TTLCache" = field(init=False)

    def __post_init__(self):
        self.ray = RayJobs(self.settings)
        self.trials_cache = TTLCache(self.settings.trials_cache_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Context":
        if settings.auto_migrate:
            db.migrate(settings.db_url)
        engine = db.make_engine(settings.db_url)
        return cls(settings, engine, db.session_factory(engine))

    @cached_property
    def mlflow(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.settings.mlflow_tracking_uri)

    @cached_property
    def mlflow_gate(self) -> "CallGate":
        return CallGate(self.settings.mlflow_max_calls, "mlflow")

    def mlflow_call(self, fn, *args):
        """``fn(client, *args)`` in the MLflow pool, waited for at most a few request timeouts.

        A hung MLflow holds at most ``SIBNN_MLFLOW_MAX_CALLS`` threads; further calls fail at once instead of
        queueing, so the endpoints that only need the database, and the reconciler, keep their threads."""
        uri, timeout = self.settings.mlflow_tracking_uri, self.settings.mlflow_timeout_s
        future = self.mlflow_gate.submit(lambda: fn(self.mlflow, *args))
        if future is None:
            raise MlflowUnavailable(f"MLflow at {uri} is not answering: {self.settings.mlflow_max_calls} calls are "
                                    f"already waiting for it (SIBNN_MLFLOW_MAX_CALLS)")
        try:
            return future.result(timeout=3 * timeout + 1)
        except concurrent.futures.TimeoutError:
            raise MlflowUnavailable(f"MLflow at {uri} did not answer within {3 * timeout + 1:g} s "
                                    f"(timeout)") from None
        except Exception as e:  # noqa: BLE001 - refused, timed out, 5xx, bad answers: one message naming the address
            raise MlflowUnavailable(explain_mlflow_error(e, uri, timeout)) from None


def explain_mlflow_error(e: Exception, uri: str, timeout: float) -> str:
    text = str(e)
    if "ReadTimeout" in text or "timeout exception" in text or "timed out" in text.lower():
        return f"MLflow at {uri} did not answer within {timeout:g} s (timeout; SIBNN_MLFLOW_TIMEOUT_S)"
    if "NewConnectionError" in text or "Connection refused" in text:
        return f"MLflow at {uri} is unreachable (connection refused)"
    if "Max retries exceeded" in text:
        return f"MLflow at {uri} is unreachable ({text.split('Caused by', 1)[-1].strip(' ()')[:200]})"
    first = (text.strip().splitlines() or [type(e).__name__])[0]
    return f"MLflow at {uri} failed: {first[:300]}"


class CallGate:
    """A bounded thread pool that refuses work instead of queueing it when every slot is taken."""

    def __init__(self, slots: int, name: str):
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=slots, thread_name_prefix=name)
        self.slots = threading.BoundedSemaphore(slots)

    def submit(self, fn) -> concurrent.futures.Future | None:
        if not self.slots.acquire(blocking=False):
            return None
        try:
            future = self.pool.submit(fn)
        except BaseException:
            self.slots.release()
            raise
        future.add_done_callback(lambda _: self.slots.release())
        return future


# --- create -------------------------------------------------------------------------------------------------------

def _root_problem(msg: str):
    return Problem(422, f"dataset.root: {msg}", title="Dataset not reachable",
                   errors=[{"field": "dataset.root", "message": msg}])


def confine_dataset(settings: Settings, spec: ExperimentSpec) -> ExperimentSpec:
    """The spec with ``dataset.root`` made absolute, after checking it lies inside one of ``SIBNN_DATA_ROOTS``.

    A relative root is taken inside the first data root (never the API's working directory). Symlinks and ``..``
    are followed before the comparison (``os.path.realpath``), so neither a link nor a climb leaves the roots.
    When the data is on the service's machine too (``SIBNN_CHECK_DATASET_PATHS``), it must also exist there."""
    ds = spec.dataset
    if ds.root is None:
        return spec
    roots = settings.data_root_paths
    given = Path(ds.root)
    path = given if given.is_absolute() else roots[0] / given
    real = Path(os.path.realpath(path))
    if not any(real == r or real.is_relative_to(r) for r in roots):
        raise _root_problem(f"{ds.root} resolves to {real}, outside the data roots of this service "
                            f"({', '.join(map(str, roots))}; SIBNN_DATA_ROOTS)")
    if settings.check_dataset_paths:
        if ds.kind == "synthetic":
            ok, why = real.is_dir() or real.parent.is_dir(), "neither it nor its parent folder exists"
        else:
            ok, why = real.is_dir(), "is not a directory"
        if not ok:
            shown = ds.root if str(real) == ds.root else f"{ds.root} (= {real})"
            raise _root_problem(f"{shown} {why} on the service's machine (set SIBNN_CHECK_DATASET_PATHS=false "
                                f"when only the cluster sees the data)")
    if str(real) == ds.root:
        return spec
    return spec.model_copy(update={"dataset": ds.model_copy(update={"root": str(real)})})


def _check_limits(ctx: Context, s: Session, spec: ExperimentSpec) -> None:
    n = len(spec.trials())
    if n > ctx.settings.max_trials:
        msg = f"the grid expands to {n} trials; this service takes at most {ctx.settings.max_trials}"
        raise Problem(422, f"grid: {msg}", title="Invalid request", errors=[{"field": "grid", "message": msg}])
    active = s.scalar(select(func.count()).select_from(Experiment).where(Experiment.status.in_(ACTIVE)))
    if active >= ctx.settings.max_active_experiments:
        raise Problem(429, f"{active} experiments are pending or running (the limit is "
                           f"{ctx.settings.max_active_experiments}); retry when one has finished",
                      headers={"Retry-After": "30"})


def _replay(s: Session, key: IdempotencyKey, fingerprint: str) -> Experiment:
    if key.fingerprint != fingerprint:
        raise Problem(422, "this Idempotency-Key was used with a different request body; use a new key",
                      title="Idempotency-Key reused", errors=[{"field": "Idempotency-Key",
                                                               "message": "used before with a different body"}])
    if key.experiment_id is None:
        raise Problem(409, "a request with this Idempotency-Key is still being processed; retry in a moment",
                      headers={"Retry-After": "2"})
    exp = s.get(Experiment, key.experiment_id)
    if exp is None:
        raise Problem(409, "the experiment created with this Idempotency-Key no longer exists; use a new key")
    return exp


def create_experiment(ctx: Context, spec: ExperimentSpec,
                      idempotency_key: str | None = None) -> tuple[Experiment, bool]:
    """Store, register in MLflow and submit to Ray. Returns (experiment, created); a replayed key returns the
    experiment it created before with created=False."""
    spec = confine_dataset(ctx.settings, spec)
    fingerprint = spec.fingerprint()
    with ctx.sessions() as s:
        if idempotency_key is not None:
            key = s.get(IdempotencyKey, idempotency_key)
            if key is not None and key.experiment_id is None and key.fingerprint == fingerprint and \
                    (utcnow() - key.created_at).total_seconds() > ABANDONED_KEY_S:
                s.delete(key)  # the request that took it died before creating anything
                s.commit()
                key = None
            if key is not None:
                return _replay(s, key, fingerprint), False
            s.add(IdempotencyKey(key=idempotency_key, fingerprint=fingerprint))
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                key = s.get(IdempotencyKey, idempotency_key)
                if key is None:
                    raise Problem(409, "a concurrent request with this Idempotency-Key is being processed") from None
                return _replay(s, key, fingerprint), False
        s.commit()  # end the key's transaction: the count and the insert below get one of their own
        try:
            db.lock_experiment_creation(s)  # held until the commit: no other request counts in between
            _check_limits(ctx, s, spec)
        except Problem:
            s.rollback()
            _forget_key(s, idempotency_key)
            raise
        exp_id = uuid.uuid4().hex[:16]
        exp = Experiment(id=exp_id, name=spec.name, spec_json=spec.model_dump_json(), spec_fingerprint=fingerprint,
                         n_trials=len(spec.trials()), status=db.PENDING, attempt=1, cancel_requested=False)
        exp.attempts.append(Attempt(number=1, submission_id=db.submission_id(exp_id, 1)))
        s.add(exp)
        s.commit()
    try:
        submit_attempt(ctx, exp_id)
    except (RayUnavailable, MlflowUnavailable) as e:
        with ctx.sessions() as s:
            _forget_key(s, idempotency_key)
            s.execute(db.Attempt.__table__.delete().where(Attempt.experiment_id == exp_id))
            s.execute(db.Experiment.__table__.delete().where(Experiment.id == exp_id))
            s.commit()
        raise Problem(503, f"{e}; nothing was submitted", title="Dependency unavailable",
                      headers={"Retry-After": "10"}) from None
    with ctx.sessions() as s:
        if idempotency_key is not None:
            s.execute(update(IdempotencyKey).where(IdempotencyKey.key == idempotency_key)
                      .values(experiment_id=exp_id))
            s.commit()
        return s.get(Experiment, exp_id), True


def _forget_key(s: Session, key: str | None) -> None:
    if key is not None:
        s.execute(IdempotencyKey.__table__.delete().where(IdempotencyKey.key == key))
        s.commit()


def submit_attempt(ctx: Context, exp_id: str) -> None:
    """MLflow experiment + parent run (so links exist before the job starts), then the Ray job of the current
    attempt. Safe to repeat: both are found by name / submission id before anything is created."""
    with ctx.sessions() as s:
        exp = s.get(Experiment, exp_id)
        spec, attempt, sid = parse_spec(exp.spec_json), exp.attempt, exp.submission_id
    mlflow_exp = ctx.mlflow_call(tracking.ensure_experiment, exp_id, spec)
    parent = ctx.mlflow_call(tracking.ensure_parent_run, exp_id, spec)
    ctx.ray.submit(spec, exp_id, sid)
    with ctx.sessions() as s:
        s.execute(update(Experiment).where(Experiment.id == exp_id)
                  .values(mlflow_experiment_id=mlflow_exp, mlflow_parent_run_id=parent))
        s.execute(update(Attempt).where(Attempt.experiment_id == exp_id, Attempt.number == attempt)
                  .values(submitted_at=utcnow()))
        s.commit()


# --- cancel -------------------------------------------------------------------------------------------------------

def get_or_404(s: Session, exp_id: str) -> Experiment:
    exp = s.get(Experiment, exp_id)
    if exp is None:
        raise Problem(404, f"no experiment {exp_id!r}")
    return exp


def cancel_experiment(ctx: Context, exp_id: str) -> Experiment:
    with ctx.sessions() as s:
        exp = get_or_404(s, exp_id)
        if exp.status == db.CANCELLED:
            return exp
        if exp.status in TERMINAL:
            raise Problem(409, f"experiment {exp_id} already ended: {exp.status}")
        exp.cancel_requested = True
        s.commit()
        sid, attempt = exp.submission_id, exp.attempt
    try:
        signalled = ctx.ray.stop(sid)
        # Ray only signals a job whose supervisor exists: a job still PENDING is not stopped by stop_job.
        done = signalled or ctx.ray.state(sid).terminal
    except JobNotFound:
        done = True  # never reached Ray, or Ray forgot it: nothing runs
    except RayUnavailable as e:
        raise Problem(503, f"{e}; the cancellation is recorded and retried", title="Dependency unavailable") from None
    if done:
        _transition(ctx, exp_id, attempt, status=db.CANCELLED, reason="cancelled by request", finished_at=utcnow())
    _refresh_ray_status(ctx, exp_id, attempt, sid)
    # else: the reconciler repeats stop_job until Ray has started (and so can stop) the job, then → CANCELLED
    with ctx.sessions() as s:
        return s.get(Experiment, exp_id)


def _refresh_ray_status(ctx: Context, exp_id: str, attempt: int, sid: str) -> None:
    """Record what Ray now says about the attempt's job (after a stop the answer must not show the old RUNNING)."""
    try:
        state = ctx.ray.state(sid)
    except JobNotFound:
        status, message, terminal = "LOST", None, True
    except RayUnavailable:
        return  # the reconciler records it on its next pass
    else:
        status, message, terminal = state.status, clean_message(state.message, 4000), state.terminal
    with ctx.sessions() as s:
        s.execute(update(Attempt).where(Attempt.experiment_id == exp_id, Attempt.number == attempt)
                  .values(ray_status=status, message=message, ended_at=utcnow() if terminal else None))
        s.commit()


def _refresh_cancelled(ctx: Context) -> None:
    """Cancelled experiments whose Ray job was still stopping when last asked: record how it ended (STOPPED)."""
    with ctx.sessions() as s:
        rows = s.execute(select(Attempt.experiment_id, Attempt.number, Attempt.submission_id)
                         .join(Experiment, (Experiment.id == Attempt.experiment_id)
                               & (Experiment.attempt == Attempt.number))
                         .where(Experiment.status == db.CANCELLED, Attempt.ray_status.in_(("PENDING", "RUNNING")))
                         .limit(100)).all()
    for exp_id, number, sid in rows:
        _refresh_ray_status(ctx, exp_id, number, sid)


# --- reconcile ----------------------------------------------------------------------------------------------------

def _transition(ctx: Context, exp_id: str, attempt: int, **values) -> bool:
    """Apply ``values`` only if the experiment is still active on ``attempt`` (no lost updates)."""
    with ctx.sessions() as s:
        res = s.execute(update(Experiment).where(Experiment.id == exp_id, Experiment.attempt == attempt,
                                                 Experiment.status.in_(ACTIVE)).values(**values))
        s.commit()
        return res.rowcount == 1


def reconcile_once(ctx: Context) -> int:
    """One pass over the active experiments; returns how many changed status. Ray unreachable: stop the pass."""
    with ctx.sessions() as s:
        ids = list(s.scalars(select(Experiment.id).where(Experiment.status.in_(ACTIVE))
                             .order_by(Experiment.created_at)))
    changed = 0
    _refresh_cancelled(ctx)
    for exp_id in ids:
        try:
            changed += reconcile_experiment(ctx, exp_id)
        except RayUnavailable as e:
            log.warning("reconciler: %s", e)
            break
        except MlflowUnavailable as e:
            log.warning("reconciler: %s", e)
        except Exception:  # noqa: BLE001 - one broken experiment must not stop the others
            log.exception("reconciler: experiment %s", exp_id)
    return changed


RAY_TO_STATUS = {"PENDING": db.PENDING, "RUNNING": db.RUNNING, "SUCCEEDED": db.SUCCEEDED, "FAILED": db.FAILED}


def reconcile_experiment(ctx: Context, exp_id: str) -> bool:
    with ctx.sessions() as s:
        exp = s.get(Experiment, exp_id)
        if exp is None or exp.status not in ACTIVE:
            return False
        att = exp.current_attempt
        attempt, sid, status, cancel = exp.attempt, exp.submission_id, exp.status, exp.cancel_requested
        submitted, created = att.submitted_at if att else None, att.created_at if att else exp.created_at
    if submitted is None:
        # Created but never confirmed submitted (the API died in between): submit now; Ray's submission_id
        # makes a duplicate harmless.
        if (utcnow() - created).total_seconds() >= ctx.settings.submit_grace_s:
            if cancel:
                return _transition(ctx, exp_id, attempt, status=db.CANCELLED, reason="cancelled by request",
                                   finished_at=utcnow())
            submit_attempt(ctx, exp_id)
        return False
    try:
        state = ctx.ray.state(sid)
    except JobNotFound:
        return _job_lost(ctx, exp_id, attempt, cancel)
    with ctx.sessions() as s:
        s.execute(update(Attempt).where(Attempt.experiment_id == exp_id, Attempt.number == attempt)
                  .values(ray_status=state.status, message=clean_message(state.message, 4000) or "",
                          ended_at=utcnow() if state.terminal else None))
        s.commit()
    if cancel and not state.terminal:
        ctx.ray.stop(sid)
        return False
    if cancel and state.status in ("STOPPED", "FAILED"):
        new, reason = db.CANCELLED, "cancelled by request"
    elif state.status == "STOPPED":
        new, reason = db.FAILED, f"the Ray job {sid} was stopped outside the service"
    else:
        new = RAY_TO_STATUS.get(state.status, status)
        reason = (f"Ray job {sid} failed: {clean_message(state.message) or 'no message'}"
                  + (f" (exit code {state.exit_code})" if state.exit_code is not None else "")
                  + f"; full log: /experiments/{exp_id}/logs"
                  if new == db.FAILED else None)
    if new == status:
        return False
    values = {"status": new, "reason": reason}
    if new == db.RUNNING:
        values["started_at"] = utcnow()
    if new in TERMINAL:
        values["finished_at"] = utcnow()
    return _transition(ctx, exp_id, attempt, **values)


def _job_lost(ctx: Context, exp_id: str, attempt: int, cancel: bool) -> bool:
    """Ray no longer knows the job (the cluster restarted): resubmit as a new attempt, which resumes."""
    if cancel:
        return _transition(ctx, exp_id, attempt, status=db.CANCELLED, reason="cancelled by request",
                           finished_at=utcnow())
    if attempt >= ctx.settings.max_attempts:
        return _transition(ctx, exp_id, attempt, status=db.FAILED, finished_at=utcnow(),
                           reason=f"the Ray cluster lost the job {attempt} times (restarts); giving up")
    with ctx.sessions() as s:
        res = s.execute(update(Experiment).where(Experiment.id == exp_id, Experiment.attempt == attempt,
                                                 Experiment.status.in_(ACTIVE))
                        .values(attempt=attempt + 1, status=db.PENDING,
                                reason=f"resubmitted: the Ray cluster lost attempt {attempt}"))
        if res.rowcount != 1:
            s.rollback()
            return False
        s.execute(update(Attempt).where(Attempt.experiment_id == exp_id, Attempt.number == attempt)
                  .values(ray_status="LOST", ended_at=utcnow()))
        s.add(Attempt(experiment_id=exp_id, number=attempt + 1, submission_id=db.submission_id(exp_id, attempt + 1)))
        s.commit()
    log.warning("experiment %s: Ray lost attempt %d, resubmitting as attempt %d", exp_id, attempt, attempt + 1)
    submit_attempt(ctx, exp_id)
    return True


# --- describe -----------------------------------------------------------------------------------------------------

def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() if t else None


def describe(ctx: Context, exp: Experiment, *, trials: bool = False) -> dict:
    ui = ctx.settings.mlflow_ui
    att = exp.current_attempt
    out = {
        "id": exp.id, "name": exp.name, "status": exp.status, "reason": exp.reason,
        "attempt": exp.attempt, "ray_submission_id": exp.submission_id,
        "ray_job_status": att.ray_status if att else None, "cancel_requested": exp.cancel_requested,
        "n_trials": exp.n_trials, "created_at": _iso(exp.created_at), "started_at": _iso(exp.started_at),
        "finished_at": _iso(exp.finished_at),
        "mlflow_experiment_id": exp.mlflow_experiment_id,
        "mlflow_url": experiment_link(ui, exp.mlflow_experiment_id),
        "links": {"self": f"/experiments/{exp.id}", "results": f"/experiments/{exp.id}/results",
                  "logs": f"/experiments/{exp.id}/logs"},
    }
    if trials:
        spec = parse_spec(exp.spec_json)
        out["spec"] = spec.model_dump(mode="json")
        out["attempts"] = [{"number": a.number, "ray_submission_id": a.submission_id, "ray_status": a.ray_status,
                            "message": a.message, "submitted_at": _iso(a.submitted_at), "ended_at": _iso(a.ended_at)}
                           for a in exp.attempts]
        try:
            out["trials"] = ctx.trials_cache.get(
                exp.id, lambda: ctx.mlflow_call(trial_status, exp.id, spec, ui, exp.mlflow_experiment_id))
            out["trials_error"] = None
        except MlflowUnavailable as e:
            out["trials"], out["trials_error"] = None, str(e)
    return out


class TTLCache:
    """Per-key values for ``ttl`` seconds: many clients polling one experiment cost one MLflow query a second."""

    def __init__(self, ttl: float, max_items: int = 1024):
        self.ttl, self.max_items = ttl, max_items
        self._data: dict[str, tuple[float, object]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, compute):
        now = time.monotonic()
        with self._lock:
            hit = self._data.get(key)
            if hit is not None and now - hit[0] < self.ttl:
                return hit[1]
        value = compute()
        with self._lock:
            if len(self._data) >= self.max_items:
                self._data.clear()
            self._data[key] = (time.monotonic(), value)
        return value
