"""Migrations before start: ``sibnn migrate`` is idempotent; API replicas started at once against one PostgreSQL
do not race (the migration holds a PostgreSQL advisory lock); with auto-migrate off (how the deployments start it)
the API leaves the schema alone."""
from __future__ import annotations

import subprocess
import sys
import uuid

import psycopg
import pytest

from console import stack
from tests.service.conftest import API_TOKEN, dead_address

pytestmark = pytest.mark.slow


@pytest.fixture
def empty_pg(postgres):
    name = f"m_{uuid.uuid4().hex[:12]}"
    admin = f"host=127.0.0.1 port={postgres.port} user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    yield f"postgresql://postgres@127.0.0.1:{postgres.port}/{name}", f"host=127.0.0.1 port={postgres.port} " \
                                                                     f"user=postgres dbname={name}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"DROP DATABASE {name} WITH (FORCE)")


def _heads() -> set[str]:
    from alembic.script import ScriptDirectory

    from service.db import alembic_config

    return set(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


def _versions(conninfo: str) -> list[str]:
    with psycopg.connect(conninfo) as c:
        return [r[0] for r in c.execute("SELECT version_num FROM alembic_version")]


def _tables(conninfo: str) -> set[str]:
    with psycopg.connect(conninfo) as c:
        return {r[0] for r in c.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def _migrate(url: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "console.cli", "migrate", "--database-url", url],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sibnn_migrate_is_idempotent_and_concurrent_runs_do_not_race(empty_pg):
    url, conninfo = empty_pg
    procs = [_migrate(url) for _ in range(3)]  # at once, on an empty database
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert _versions(conninfo) == sorted(_heads())
    again = _migrate(url)
    out = again.communicate(timeout=120)[0]
    assert again.returncode == 0 and "up to date" in out, out
    assert _versions(conninfo) == sorted(_heads())


def _api_env(tmp_path, name: str, url: str, **extra) -> dict:
    return stack.api_env(home=tmp_path / name, ray_address=dead_address(), mlflow_url=dead_address(),
                         api_token=API_TOKEN, database_url=url, **extra)


def test_two_api_replicas_started_at_once_against_one_postgresql_do_not_race(empty_pg, tmp_path):
    url, conninfo = empty_pg
    ports = stack.free_ports(2)
    apis = [stack.start_api(_api_env(tmp_path, f"api{i}", url), port, log_path=tmp_path / f"api{i}.log",
                            wait=False) for i, port in enumerate(ports)]
    try:
        for api, port in zip(apis, ports):
            stack.wait_http(api, f"http://127.0.0.1:{port}/healthz", 90)
        assert _versions(conninfo) == sorted(_heads())
        assert {"experiments", "attempts"} <= _tables(conninfo)
    finally:
        for api in apis:
            api.stop()


def test_with_auto_migrate_off_the_api_leaves_the_schema_to_sibnn_migrate(empty_pg, tmp_path):
    url, conninfo = empty_pg
    (port,) = stack.free_ports(1)
    api = stack.start_api(_api_env(tmp_path, "api", url, auto_migrate="false"), port, log_path=tmp_path / "api.log")
    try:
        assert "alembic_version" not in _tables(conninfo)
    finally:
        api.stop()
