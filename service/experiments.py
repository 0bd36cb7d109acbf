"""What the service does with an experiment: create and submit it, cancel it, describe it, keep it in step with Ray.

Blocking code only (SQLAlchemy sessions, ``JobSubmissionClient``, ``MlflowClient``): the API calls it from sync
endpoints (FastAPI's thread pool), the reconciler from a worker thread. The tables are read and written through
``service.store``; what the reconciler does with an experiment is decided by ``service.reconcile.decide`` (a pure
function) and applied here; refusals are ``service.errors`` exceptions, which ``service.problems`` maps to HTTP.

Status follows the Ray job of the experiment's current attempt (Ray ``submission_id`` = ``<id>-<attempt>``):
PENDING → RUNNING → SUCCEEDED | FAILED | CANCELLED. When the Ray cluster no longer knows the job (it restarted),
the experiment is resubmitted as a new attempt with the same experiment id, and the job resumes its trials from
their checkpoints and its MLflow runs by tag.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import functools
import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from operator import attrgetter
from pathlib import Path

import cachetools
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from jobs import estimate, tracking
from jobs.spec import ExperimentSpec, parse_spec
from service import db
from service.db import ExperimentRow
from service.calls import CallGate
from service.errors import Conflict, DependencyUnavailable, DomainError, InvalidInput, NotFound
from service.ray_jobs import JobNotFound, JobState, RayJobs, RayUnavailable, clean_message
from service.reconcile import CANCELLED_BY_REQUEST, Action, Limits, Ray, Seen, decide
from service.results import experiment_link, trial_status
from service.settings import Settings
from service.store import Store

log = logging.getLogger("service.experiments")


class MlflowUnavailable(DependencyUnavailable):
    """MLflow refused the connection, timed out, answered with an error, or every call slot is taken."""


# What counts as "MLflow is unavailable": its client's errors (it wraps connection failures and error answers in
# MlflowException), the HTTP layer's, and the OS's. Anything else raised inside a call is a bug: it propagates.
MLFLOW_FAILURES = (MlflowException, requests.exceptions.RequestException, OSError)


@dataclass
class Context:
    """What every request and the reconciler share: settings, database, Ray and MLflow clients."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker
    ray: RayJobs = field(init=False)
    store: Store = field(init=False)
    # Per-trial state from MLflow, per experiment for ``trials_cache_s``: many clients polling one experiment cost
    # one MLflow query a second. A lock, no condition: requests never wait on another's MLflow call (a hung MLflow
    # would hold every waiting request's thread); the call gate refuses the extra calls at once instead.
    trials_cache: cachetools.TTLCache = field(init=False)
    trials_lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    # Set when an experiment is accepted: the reconciler submits it now rather than at its next interval.
    wake: threading.Event = field(init=False, default_factory=threading.Event)

    def __post_init__(self):
        self.ray = RayJobs(self.settings)
        self.store = Store(self.sessions)
        self.trials_cache = cachetools.TTLCache(maxsize=1024, ttl=self.settings.trials_cache_s)

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
        queueing, so the endpoints that only need the database, and the reconciler, keep their threads. MLflow's
        failures (refused, timed out, error answers) become MlflowUnavailable naming the address; any other
        exception is a bug and propagates as it is."""
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
        except MLFLOW_FAILURES as e:
            raise MlflowUnavailable(explain_mlflow_error(e, uri, timeout)) from None

    @cachetools.cachedmethod(attrgetter("trials_cache"), key=lambda _self, exp, _spec: exp.id,
                             lock=attrgetter("trials_lock"))
    def trials(self, exp: ExperimentRow, spec: ExperimentSpec) -> list[dict]:
        """Per trial of ``exp``: state, epoch, latest metrics, MLflow link (cached ``trials_cache_s`` seconds)."""
        return self.mlflow_call(trial_status, exp.id, spec, self.settings.mlflow_ui, exp.mlflow_experiment_id)


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


# --- create -------------------------------------------------------------------------------------------------------

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
        raise InvalidInput("dataset.root", f"{ds.root} resolves to {real}, outside the data roots of this service "
                                           f"({', '.join(map(str, roots))}; SIBNN_DATA_ROOTS)",
                           title="Dataset not reachable")
    if settings.check_dataset_paths:
        if ds.kind == "synthetic":
            ok, why = real.is_dir() or real.parent.is_dir(), "neither it nor its parent folder exists"
        else:
            ok, why = real.is_dir(), "is not a directory"
        if not ok:
            shown = ds.root if str(real) == ds.root else f"{ds.root} (= {real})"
            raise InvalidInput("dataset.root", f"{shown} {why} on the service's machine (set "
                                               f"SIBNN_CHECK_DATASET_PATHS=false when only the cluster sees the data)",
                               title="Dataset not reachable")
    if str(real) == ds.root:
        return spec
    return spec.model_copy(update={"dataset": ds.model_copy(update={"root": str(real)})})


def create_experiment(ctx: Context, spec: ExperimentSpec,
                      idempotency_key: str | None = None) -> tuple[ExperimentRow, bool]:
    """Accept: check the spec against this service's limits and store it PENDING, with its key, in one transaction.
    Nothing here calls MLflow or Ray: the reconciler submits it (``submit_attempt``), woken at once. Returns
    (experiment, created); a replayed key returns the experiment it created before with created=False."""
    spec = confine_dataset(ctx.settings, spec)
    n = len(spec.trials())
    if n > ctx.settings.max_trials:
        raise InvalidInput("grid", f"the grid expands to {n} trials; this service takes at most "
                                   f"{ctx.settings.max_trials}")
    exp, created = ctx.store.create(uuid.uuid4().hex[:16], key=idempotency_key, fingerprint=spec.fingerprint(),
                                    name=spec.name, spec_json=spec.model_dump_json(), n_trials=n,
                                    max_active=ctx.settings.max_active_experiments)
    if created:
        ctx.wake.set()
    return exp, created


def submit_attempt(ctx: Context, exp_id: str, ray_down: RayUnavailable | None = None) -> None:
    """Submit the current attempt, one recorded step at a time, so a restart neither loses nor repeats a step:
    1. the MLflow experiment and parent run (links exist before the job starts; ``mlflow_parent_run_id``),
    2. the Ray job (``submitted_at``; Ray's submission id makes a repeated submit a no-op).
    Only the reconciler holding the attempt's claim submits (a lease of ``submit_grace_s``: replicas never submit
    twice at once). A failure gives the claim back, says why in the status, and raises: the next pass retries.
    ``ray_down``: Ray already failed in this pass: step 1 only, and that failure is the reason given."""
    exp = ctx.store.get(exp_id)
    if exp is None or exp.status != db.PENDING or exp.cancel_requested:
        return
    attempt = exp.attempt
    if not ctx.store.claim_submission(exp_id, attempt, ctx.settings.submit_grace_s):
        return
    try:
        spec = parse_spec(exp.spec_json)  # it comes back from the database: parsed once more, as any stored input
        if exp.mlflow_parent_run_id is None:
            mlflow_exp = ctx.mlflow_call(tracking.ensure_experiment, exp_id, spec)
            parent = ctx.mlflow_call(tracking.ensure_parent_run, exp_id, spec)
            ctx.store.record_mlflow(exp_id, mlflow_exp, parent)
        if ray_down is not None:
            raise ray_down
        ctx.ray.submit(spec, exp_id, exp.submission_id)
    except DependencyUnavailable as e:
        ctx.store.release_submission(exp_id, attempt, f"{e}; retried every {ctx.settings.reconcile_interval_s:g} s")
        raise
    except BaseException:
        ctx.store.release_submission(exp_id, attempt, "the submission failed (see the service log); retried")
        raise
    ctx.store.record_submitted(exp_id, attempt)
    if ctx.store.get(exp_id).cancel_requested:  # cancelled while this was submitting: stop what was just started
        with contextlib.suppress(JobNotFound, RayUnavailable):
            ctx.ray.stop(exp.submission_id)


# --- cancel -------------------------------------------------------------------------------------------------------

def find(ctx: Context, exp_id: str) -> ExperimentRow:
    exp = ctx.store.get(exp_id)
    if exp is None:
        raise NotFound(f"no experiment {exp_id!r}")
    return exp


def cancel_experiment(ctx: Context, exp_id: str) -> ExperimentRow:
    exp = ctx.store.request_cancel(exp_id)
    if exp is None:
        raise NotFound(f"no experiment {exp_id!r}")
    if exp.status == db.CANCELLED:
        return exp
    if exp.status in db.TERMINAL:
        raise Conflict(f"experiment {exp_id} already ended: {exp.status}")
    sid, attempt = exp.submission_id, exp.attempt
    att = exp.current_attempt
    if att is None or att.submitted_at is None:
        # Never submitted: nothing runs, so Ray need not be asked (it may be down). A submission under way checks
        # cancel_requested once Ray has the job, and stops it.
        ctx.store.transition(exp_id, attempt, status=db.CANCELLED, reason=CANCELLED_BY_REQUEST, finished=True)
        return ctx.store.get(exp_id)
    try:
        signalled = ctx.ray.stop(sid)
        # Ray only signals a job whose supervisor exists: a job still PENDING is not stopped by stop_job.
        done = signalled or ctx.ray.state(sid).terminal
    except JobNotFound:
        done = True  # never reached Ray, or Ray forgot it: nothing runs
    except RayUnavailable as e:
        raise DependencyUnavailable(f"{e}; the cancellation is recorded and retried") from None
    if done:
        ctx.store.transition(exp_id, attempt, status=db.CANCELLED, reason=CANCELLED_BY_REQUEST, finished=True)
    _refresh_ray_status(ctx, exp_id, attempt, sid)
    # else: the reconciler repeats stop_job until Ray has started (and so can stop) the job, then → CANCELLED
    return ctx.store.get(exp_id)


def _refresh_ray_status(ctx: Context, exp_id: str, attempt: int, sid: str) -> None:
    """Record what Ray now says about a cancelled experiment's job (after a stop the answer must not show the old
    RUNNING). Once the job has ended, its MLflow runs still RUNNING are ended as KILLED: the job's driver does that
    on SIGTERM, but Ray kills a driver that takes longer than its stop grace period."""
    try:
        state = ctx.ray.state(sid)
        status, message, ended = state.status, clean_message(state.message, 4000), state.terminal
    except JobNotFound:
        status, message, ended = "LOST", None, True
    except RayUnavailable:
        return  # the reconciler records it on its next pass
    if ended:
        try:
            if n := ctx.mlflow_call(tracking.mark_killed, exp_id):
                log.info("experiment %s: %d MLflow runs its stopped job left RUNNING ended as KILLED", exp_id, n)
        except MlflowUnavailable as e:
            log.warning("experiment %s: %s; its runs are ended on the next pass", exp_id, e)
            return  # not recorded: the reconciler's next pass comes back here
    ctx.store.record_ray_state(exp_id, attempt, status, message, ended=ended)


# --- reconcile ----------------------------------------------------------------------------------------------------

def reconcile_once(ctx: Context) -> int:
    """One pass over the active experiments; returns how many changed status.

    Ray unavailable: no more Ray calls this pass (each would fail the same way), but accepted experiments still get
    their MLflow step and a reason naming Ray. MLflow unavailable: no more submissions this pass (each would wait
    out its timeout); following Ray's job states goes on."""
    ids = ctx.store.active_ids()
    changed = 0
    submit, ray_down = True, None
    for exp_id, number, sid in ctx.store.cancelled_still_stopping():
        _refresh_ray_status(ctx, exp_id, number, sid)  # record how a cancelled job ended (STOPPED)
    for exp_id in ids:
        try:
            changed += reconcile_experiment(ctx, exp_id, submit=submit, ray_down=ray_down)
        except RayUnavailable as e:
            if ray_down is None:  # once a pass, not once per experiment it then holds back
                log.warning("reconciler: %s", e)
            ray_down = e
        except MlflowUnavailable as e:
            log.warning("reconciler: %s", e)
            submit = False
        except Exception:  # noqa: BLE001 - one broken experiment must not stop the others
            log.exception("reconciler: experiment %s", exp_id)
    return changed


def reconcile_experiment(ctx: Context, exp_id: str, *, submit: bool = True,
                         ray_down: RayUnavailable | None = None) -> bool:
    """Ask Ray about the experiment's current attempt, record the answer, and apply ``reconcile.decide`` (a
    submission only when ``submit``). True when the experiment's status changed. Raises RayUnavailable when Ray
    cannot be asked. ``ray_down``: Ray failed earlier in this pass; it is not asked again (a submission does its
    MLflow step only)."""
    exp = ctx.store.get(exp_id)
    if exp is None or exp.status not in db.ACTIVE:
        return False
    att = exp.current_attempt
    submitted = att is not None and att.submitted_at is not None
    if submitted and ray_down is not None:
        return False
    seen = Seen(exp_id, exp.status, exp.attempt, exp.cancel_requested, submitted)
    ray: JobState | Ray = Ray.NOT_ASKED
    unreachable = None
    if submitted:
        try:
            ray = ctx.ray.state(exp.submission_id)
        except JobNotFound:
            ray = Ray.LOST
        except RayUnavailable as e:
            ray, unreachable = Ray.UNREACHABLE, e
    if isinstance(ray, JobState):
        ctx.store.record_ray_state(exp_id, exp.attempt, ray.status, clean_message(ray.message, 4000) or "",
                                   ended=ray.terminal)
    d = decide(seen, ray, Limits(ctx.settings.max_attempts))
    match d.action:
        case Action.NOTHING:
            return False
        case Action.SUBMIT:
            if submit:
                submit_attempt(ctx, exp_id, ray_down=ray_down)
            return False
        case Action.STOP_JOB:
            ctx.ray.stop(exp.submission_id)
            return False
        case Action.SET_STATUS:
            return ctx.store.transition(exp_id, exp.attempt, status=d.status, reason=d.reason, started=d.started,
                                        finished=d.finished)
        case Action.NEXT_ATTEMPT:
            if not ctx.store.next_attempt(exp_id, exp.attempt, d.reason):
                return False
            log.warning("experiment %s: Ray lost attempt %d, resubmitting as attempt %d", exp_id, exp.attempt,
                        exp.attempt + 1)
            submit_attempt(ctx, exp_id)
            return True
        case Action.HALT:
            raise unreachable
    raise AssertionError(f"unhandled reconcile action {d.action}")


# --- describe -----------------------------------------------------------------------------------------------------

def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() if t else None


@functools.lru_cache(maxsize=1024)
def gpu_hours(spec_json: str) -> dict | None:
    """``jobs.estimate.summary`` of a stored spec (cached by its text: a listing asks for it per experiment), or
    None where no estimate can be made (a dataset of unknown size, a model without a stored summary)."""
    try:
        return estimate.summary(parse_spec(spec_json))
    except (ValueError, RuntimeError, KeyError):
        return None


def describe(ctx: Context, exp: ExperimentRow, *, trials: bool = False) -> dict:
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
        "gpu_hours": gpu_hours(exp.spec_json),
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
            out["trials"], out["trials_error"] = ctx.trials(exp, spec), None
        except MlflowUnavailable as e:
            out["trials"], out["trials_error"] = None, str(e)
    return out
