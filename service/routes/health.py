"""/healthz (the process answers) and /readyz (database, Ray and MLflow each reported)."""
from __future__ import annotations

import time

import httpx
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from service.deps import CtxDep
from service.ray_jobs import RayUnavailable
from service.schemas import Health, Readiness, problems

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, responses=problems(500))
async def healthz():
    return {"status": "ok"}


def _timed(fn):
    t = time.perf_counter()
    try:
        detail = fn()
        ok = True
    except Exception as e:  # noqa: BLE001 - each dependency's failure is reported, not raised
        detail, ok = (str(e).strip().splitlines() or [type(e).__name__])[0][:500], False
    return {"ok": ok, "detail": detail, "ms": round(1000 * (time.perf_counter() - t), 1)}


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "a dependency is not ready"}, **problems(500)})
def readyz(ctx: CtxDep):
    s = ctx.settings

    def database():
        with ctx.engine.connect() as c:
            c.execute(text("SELECT 1"))
        return ctx.engine.url.render_as_string(hide_password=True)

    def ray():
        try:
            return f"{s.ray_address} (Ray {ctx.ray.ping()}, token {'set' if s.ray_token else 'not set'})"
        except RayUnavailable as e:
            raise RuntimeError(str(e)) from None

    def mlflow():
        uri = s.mlflow_tracking_uri.rstrip("/")
        if not uri.startswith("http"):
            return uri
        try:
            r = httpx.get(f"{uri}/health", timeout=s.mlflow_timeout_s)
        except httpx.TimeoutException:
            raise RuntimeError(f"MLflow at {uri} did not answer within {s.mlflow_timeout_s:g} s (timeout)") from None
        except httpx.HTTPError as e:
            raise RuntimeError(f"MLflow at {uri} is unreachable: {e}") from None
        if r.status_code != 200:
            raise RuntimeError(f"MLflow at {uri} answered {r.status_code}: {r.text[:200]}")
        # /health is exempt from MLflow's Host-header check (≥ 3.5) and its basic-auth login; a real API call is
        # not, so ask one, with the login MLflow's own client uses (MLFLOW_TRACKING_USERNAME/PASSWORD).
        from mlflow.utils.credentials import read_mlflow_creds

        creds = read_mlflow_creds()
        r = httpx.get(f"{uri}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                      timeout=s.mlflow_timeout_s,
                      auth=(creds.username, creds.password) if creds.username and creds.password else None)
        if r.status_code == 401:
            raise RuntimeError(f"MLflow at {uri} asks for a login (401): set MLFLOW_TRACKING_USERNAME and "
                               "MLFLOW_TRACKING_PASSWORD (or _FILE in the images)")
        if r.status_code == 403:
            raise RuntimeError(f"MLflow at {uri} refuses this Host header (403): add it to the server's "
                               "--allowed-hosts")
        if r.status_code != 200:
            raise RuntimeError(f"MLflow at {uri} answered {r.status_code} to an API call: {r.text[:200]}")
        return uri

    checks = {"database": _timed(database), "ray": _timed(ray), "mlflow": _timed(mlflow)}
    ready = all(c["ok"] for c in checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks},
                        status_code=200 if ready else 503)
