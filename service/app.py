"""The FastAPI control plane: ``create_app(settings)``; ``service.app:app`` reads the settings from the env.

The lifespan opens the database (migrating it), and runs the reconciler: every few seconds, in a worker thread
(the Ray and MLflow clients block), experiment status is brought in step with Ray, and the experiments the API
accepted are submitted (MLflow parent run, then the Ray job): a request never waits on MLflow or Ray to create one.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from service import problems, schemas
from service.experiments import Context, reconcile_once
from service.guard import RequestGuard
from service.routes import experiments, health, models, tables
from service.settings import Settings

log = logging.getLogger("service")


async def _reconcile_forever(ctx: Context) -> None:
    # Its own thread, not the request thread pool: a flood of requests cannot delay the reconciler, nor it them.
    own = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="reconciler")
    loop = asyncio.get_running_loop()
    try:
        while True:
            ctx.wake.clear()  # before the pass: an experiment accepted during it wakes the wait below at once
            try:
                await loop.run_in_executor(own, reconcile_once, ctx)
            except Exception:  # noqa: BLE001
                log.exception("reconciler pass failed")
            # The interval, or less when an experiment was accepted meanwhile (it is submitted by the next pass).
            await loop.run_in_executor(own, ctx.wake.wait, ctx.settings.reconcile_interval_s)
    finally:
        ctx.wake.set()  # a wait in progress returns now: its thread does not outlive the app by an interval
        own.shutdown(wait=False)


def create_app(settings: Settings | None = None, *, reconcile: bool = True) -> FastAPI:
    settings = settings or Settings()
    # MLflow's client retries for minutes by default: one try with a short timeout, then 503 naming the cause
    # (a timed-out read is never repeated). Process-wide: the MLflow client reads these on every request.
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, math.ceil(settings.mlflow_timeout_s)))  # whole seconds

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        ctx = await anyio.to_thread.run_sync(Context.from_settings, settings)
        app.state.ctx = ctx
        task = asyncio.create_task(_reconcile_forever(ctx)) if reconcile else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
            ctx.engine.dispose()

    app = FastAPI(title="sibnn", version="1", lifespan=lifespan,
                  description="Reproduce the Si-BNN paper's tables on a Ray cluster; runs recorded in MLflow.")
    problems.install(app)
    app.add_middleware(RequestGuard, settings=settings)
    for r in (experiments.router, tables.router, models.router, health.router):
        app.include_router(r)
    app.openapi = lambda: schemas.openapi_with_problems(app)  # errors documented as application/problem+json
    return app


def __getattr__(name: str):
    # `uvicorn service.app:app`: built on first access, so importing this module reads no environment.
    if name == "app":
        return create_app()
    raise AttributeError(name)
