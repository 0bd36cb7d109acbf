"""/experiments: launch, list, describe, cancel, logs, results."""
from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Body, Header, Path, Query, Response
from fastapi.responses import PlainTextResponse, StreamingResponse

from jobs.presets import PRESETS
from jobs.spec import ExperimentSpec
from service import db
from service.deps import READ_AUTH, WRITE, CtxDep
from service.errors import NotFound
from service.experiments import Context, cancel_experiment, create_experiment, describe, find
from service.ray_jobs import JobNotFound, RayUnavailable
from service.results import results_rows
from service.schemas import Experiment as ExperimentOut
from service.schemas import ExperimentDetail, ExperimentPage, ExperimentStatus, Results, problems

router = APIRouter(prefix="/experiments", tags=["experiments"])
ExperimentId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
READ = problems(401, 422, 500)  # every read: the token when reads are closed, bad parameters, the guard


@router.post("", status_code=202, dependencies=[WRITE], response_model=ExperimentOut,
             response_model_exclude_unset=True,
             responses=problems(401, 409, 413, 415, 422, 429, 500, 503))
def create(spec: Annotated[ExperimentSpec, Body(openapi_examples={
               "digits": {"summary": "the embedded digits sweep", "value": PRESETS["digits"]}})],
           response: Response, ctx: CtxDep,
           idempotency_key: Annotated[str | None,
                                      Header(alias="Idempotency-Key", min_length=1, max_length=255)] = None):
    """Validate the spec and store it PENDING; 202 with ``Location``. Only the database is used: the reconciler
    then creates the MLflow parent run and submits the Ray job (retrying while either is down; ``reason`` says why).

    ``Idempotency-Key``: the same key with the same body returns the same experiment (``Idempotent-Replayed``),
    also when the requests arrive together; with a different body 422."""
    exp, created = create_experiment(ctx, spec, idempotency_key)
    response.headers["Location"] = f"/experiments/{exp.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return describe(ctx, exp)


@router.get("", dependencies=[READ_AUTH], response_model=ExperimentPage, response_model_exclude_unset=True,
            responses=READ)
def list_experiments(ctx: CtxDep, status: ExperimentStatus | None = None,
                     limit: Annotated[int, Query(ge=1, le=500)] = 50,
                     offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0):
    total, items = ctx.store.page(status, limit, offset)
    out = {"items": [describe(ctx, e) for e in items], "total": total, "limit": limit, "offset": offset,
           "next": None}
    if offset + limit < total:
        out["next"] = f"/experiments?limit={limit}&offset={offset + limit}" + (f"&status={status}" if status else "")
    return out


@router.get("/{experiment_id}", dependencies=[READ_AUTH], response_model=ExperimentDetail,
            response_model_exclude_unset=True, responses={**READ, **problems(404)})
def get(experiment_id: ExperimentId, ctx: CtxDep):
    """Status (with the reason), attempts, and per trial: state, epoch, latest metrics, MLflow links."""
    return describe(ctx, find(ctx, experiment_id), trials=True)


@router.delete("/{experiment_id}", status_code=202, dependencies=[WRITE],
               response_model=ExperimentOut, response_model_exclude_unset=True,
               responses=problems(401, 404, 409, 413, 415, 422, 500, 503))
def cancel(experiment_id: ExperimentId, ctx: CtxDep):
    """Cancel: stop the Ray job (its MLflow runs are marked KILLED, checkpoints kept) → CANCELLED."""
    exp = cancel_experiment(ctx, experiment_id)
    return describe(ctx, exp)


def _submission(ctx: Context, experiment_id: str, attempt: int | None) -> str:
    exp = find(ctx, experiment_id)
    n = exp.attempt if attempt is None else attempt
    if not 1 <= n <= exp.attempt:
        raise NotFound(f"experiment {experiment_id} has attempts 1..{exp.attempt}, not {n}")
    return db.submission_id(experiment_id, n)


def _logs(ctx: Context, sid: str) -> str:
    try:
        return ctx.ray.logs(sid)
    except JobNotFound:
        return ""


def _tail(text: str, n: int) -> str:
    lines = text.splitlines(keepends=True)
    return "".join(lines[-n:]) if n else text


@router.get("/{experiment_id}/logs", dependencies=[READ_AUTH], response_class=PlainTextResponse,
            responses={200: {"description": "the log as text; with ``follow=true`` streamed until the job ends",
                             "content": {"text/plain": {"schema": {"type": "string"}}}},
                       **READ, **problems(404, 503)})
def logs(experiment_id: ExperimentId, ctx: CtxDep,
         tail: Annotated[int, Query(ge=0, le=100_000, description="last N lines (0: all)")] = 200,
         follow: Annotated[bool, Query(description="stream until the job ends")] = False,
         attempt: Annotated[int | None, Query(ge=1, le=1000)] = None):
    """The Ray job's driver log: the last ``tail`` lines, or a stream (``follow=true``) until the job ends."""
    sid = _submission(ctx, experiment_id, attempt)
    first = _logs(ctx, sid)
    if not follow:
        return PlainTextResponse(_tail(first, tail))

    async def stream():
        # Ray's tail_job_logs websocket pushes only what is new: a long log is downloaded once, not every second.
        yield _tail(first, tail)
        try:
            async for chunk in ctx.ray.follow(sid, skip=len(first)):
                yield chunk
            state = await anyio.to_thread.run_sync(ctx.ray.state, sid)
        except (JobNotFound, RayUnavailable) as e:
            yield f"\n[sibnn: log stream ended: {e}]\n"
            return
        yield f"\n[sibnn: job {sid} {state.status}]\n"

    return StreamingResponse(stream(), media_type="text/plain; charset=utf-8")


@router.get("/{experiment_id}/results", dependencies=[READ_AUTH], response_model=Results,
            response_model_exclude_unset=True, responses={**READ, **problems(404, 503)})
def results(experiment_id: ExperimentId, ctx: CtxDep):
    """One row per trial: arch, binarizer, ρ, seed, final and best top-1/top-5, sparsity, epochs, wall time,
    images/s, MLflow link, and for Si-BNN trials the bit-packed CPU model's file size and batch-1 latency."""
    status = find(ctx, experiment_id).status
    rows = ctx.mlflow_call(results_rows, experiment_id, ctx.settings.mlflow_ui)
    return {"experiment_id": experiment_id, "status": status, "rows": rows}
