"""Fixtures of the service tests: real components, started once per session and stopped by process group.

- ``servers``: one Ray head (token auth on, private temp dir and ports, 2 CPUs) and one MLflow server (SQLite),
  started concurrently the first time a slow test needs them.
- ``postgres``: a private PostgreSQL 15 cluster (initdb + pg_ctl in a temp dir); ``db_url`` is parametrised over
  SQLite and PostgreSQL, a fresh database per test.
- ``offline_settings``: Ray and MLflow addresses where nothing listens (validation, auth, problem details).
"""
from __future__ import annotations

import contextlib
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from console import stack
from jobs.presets import preset
from service.settings import Settings
from tests.postgres import start_postgres

API_TOKEN = "test-api-token"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def small_digits(name: str = "digits small", epochs: int = 2) -> dict:
    """Two trials (Si-BNN ρ=0.3 and FP, seed 0), two epochs: the cheapest real sweep."""
    spec = preset("digits", grid={"binarizer": ["sibnn", "fp"], "rho": [0.3], "seed": [0]},
                  recipe={"epochs": epochs}).model_dump(mode="json")
    return {**spec, "name": name}


def dead_address() -> str:
    """An http address where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- databases ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def postgres():
    try:
        pg = start_postgres()
    except FileNotFoundError as e:
        if os.environ.get("CI"):  # `make test` installs postgresql-15: in CI a missing server is a failure
            raise
        pytest.skip(f"{e} (install Debian's postgresql-15; `make test` does)")
    yield pg
    pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'service.db'}"
        return
    pg = request.getfixturevalue("postgres")
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    yield f"postgresql://postgres@127.0.0.1:{pg.port}/{name}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"DROP DATABASE {name} WITH (FORCE)")


# --- Ray head and MLflow ------------------------------------------------------------------------------------------

@dataclass
class Servers:
    ray: stack.RayHead
    mlflow: stack.MlflowServer
    home: Path


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    home = tmp_path_factory.mktemp("servers")
    ray = stack.start_ray_head(home, num_cpus=2, wait=False)
    try:
        ml = stack.start_mlflow(home, wait=False)
    except BaseException:
        stack.stop_ray_head(ray)
        raise
    try:
        stack.wait_http(ml.server, f"{ml.url}/health", 180)
        stack.wait_ray(ray, 180)
        yield Servers(ray, ml, home)
    finally:
        ml.stop()
        stack.stop_ray_head(ray)


def live_settings(servers: Servers, tmp_path: Path, **kw) -> Settings:
    base = dict(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'service.db'}",
                ray_address=servers.ray.dashboard_url, ray_auth_token=servers.ray.token,
                mlflow_tracking_uri=servers.mlflow.url, api_token=API_TOKEN, storage_path=tmp_path / "runs",
                reconcile_interval_s=1.0)
    base.update(kw)
    return Settings(**base)


@pytest.fixture
def offline_settings(tmp_path, db_url) -> Settings:
    return Settings(home=tmp_path / "home", database_url=db_url, ray_address=dead_address(),
                    mlflow_tracking_uri=dead_address(), api_token=API_TOKEN, reconcile_interval_s=3600,
                    request_timeout_s=2)


# create_app sets these for the whole process (MLflow's client reads them on every request): one try, a short
# timeout. An in-process app must not leave them behind: a later in-process sweep's Ray workers would inherit
# them and fail a trial on the first slow MLflow answer of a loaded machine.
APP_PROCESS_ENV = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")


@contextlib.contextmanager
def api_client(settings: Settings, reconcile: bool = True):
    from fastapi.testclient import TestClient

    from service.app import create_app

    before = {k: os.environ.get(k) for k in APP_PROCESS_ENV}
    try:
        with TestClient(create_app(settings, reconcile=reconcile)) as c:
            yield c
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def offline_api(offline_settings):
    with api_client(offline_settings, reconcile=False) as c:
        yield c


# --- the API as a process -----------------------------------------------------------------------------------------

@dataclass
class LiveApi:
    server: stack.Server
    url: str
    env: dict

    def stop(self):
        self.server.stop(timeout=10)


def start_live_api(servers: Servers, tmp_path: Path, port: int | None = None, **settings) -> LiveApi:
    port = port or stack.free_port()
    env = stack.api_env(home=tmp_path / "home", ray=servers.ray, mlflow_url=servers.mlflow.url, api_token=API_TOKEN,
                        database_url=settings.pop("database_url", f"sqlite:///{tmp_path / 'service.db'}"),
                        storage_path=tmp_path / "runs", reconcile_interval_s=1, **settings)
    server = stack.start_api(env, port, log_path=tmp_path / f"api-{port}.log")
    return LiveApi(server, f"http://127.0.0.1:{port}", env)


def wait_status(get, want, timeout: float, poll: float = 1.0) -> dict:
    """Poll ``get()`` (an experiment dict) until its status is in ``want``; fail naming the last status."""
    import time

    deadline = time.monotonic() + timeout
    exp = get()
    while exp["status"] not in want:
        if exp["status"] in TERMINAL or time.monotonic() > deadline:
            pytest.fail(f"experiment {exp['id']} is {exp['status']} ({exp.get('reason')}), wanted {want}; "
                        f"attempts: {exp.get('attempts')}")
        time.sleep(poll)
        exp = get()
    return exp


def ray_job_status(servers: Servers, submission_id: str) -> str:
    r = httpx.get(f"{servers.ray.dashboard_url}/api/jobs/{submission_id}",
                  headers={"Authorization": f"Bearer {servers.ray.token}"}, timeout=10)
    r.raise_for_status()
    return r.json()["status"]


def cancel_and_wait(servers: Servers, cancel, submission_id: str, timeout: float = 120) -> str:
    """Cancel once Ray has started the job's driver, then wait until Ray reports the job ended (a stop that lands
    while Ray is still starting the driver can leave the driver running)."""
    import time

    deadline = time.monotonic() + timeout
    while ray_job_status(servers, submission_id) == "PENDING" and time.monotonic() < deadline:
        time.sleep(1)
    cancel()
    while (status := ray_job_status(servers, submission_id)) not in ("STOPPED", "FAILED", "SUCCEEDED"):
        if time.monotonic() > deadline:
            pytest.fail(f"Ray job {submission_id} still {status} {timeout:.0f}s after the cancel")
        time.sleep(1)
    return status
