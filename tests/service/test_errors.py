"""Domain errors become problem details in one place (``service.problems.STATUS``); MLflow's failures become 503
naming the address, and a bug inside an MLflow call stays a bug: 500, logged with its stack, never "MLflow
unavailable". Ray and MLflow point at addresses where nothing listens; SQLite."""
import contextlib
import logging

import pytest
import requests
from fastapi import FastAPI
from fastapi.testclient import TestClient
from mlflow.exceptions import MlflowException

from service import problems
from service.errors import Conflict, DependencyUnavailable, InvalidInput, LimitReached, NotFound
from service.experiments import Context, MlflowUnavailable
from service.settings import Settings
from tests.service.conftest import API_TOKEN, dead_address

PROBLEM = "application/problem+json"


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # as create_app sets it
    return Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'service.db'}",
                    ray_address=dead_address(), mlflow_tracking_uri=dead_address(), api_token=API_TOKEN,
                    reconcile_interval_s=3600, request_timeout_s=2, mlflow_timeout_s=2)


@pytest.fixture
def ctx(settings):
    ctx = Context.from_settings(settings)
    yield ctx
    ctx.engine.dispose()


@contextlib.contextmanager
def client(settings):
    from service.app import create_app

    with TestClient(create_app(settings, reconcile=False), raise_server_exceptions=False) as c:
        yield c


def _one_experiment(ctx: Context, exp_id: str = "e1") -> None:
    ctx.store.create(exp_id, key=None, fingerprint="f", name="n", spec_json="{}", n_trials=1, max_active=10)


# --- Context.mlflow_call ------------------------------------------------------------------------------------------

def test_an_unreachable_mlflow_is_mlflow_unavailable_naming_the_address(ctx, settings):
    with pytest.raises(MlflowUnavailable) as e:
        ctx.mlflow_call(lambda c: c.search_experiments(max_results=1))
    assert settings.mlflow_tracking_uri in str(e.value) and "unreachable" in str(e.value)


@pytest.mark.parametrize("error, words", [
    (MlflowException("API request to /x failed with timeout exception ReadTimeout"), "(timeout; SIBNN_MLFLOW"),
    (requests.exceptions.ConnectionError("Max retries exceeded (Caused by NewConnectionError(...))"),
     "connection refused"),
    (requests.exceptions.ReadTimeout("read timed out"), "(timeout; SIBNN_MLFLOW"),
    (ConnectionResetError("reset by peer"), "failed: reset by peer"),
    (MlflowException("RESOURCE_DOES_NOT_EXIST: no such run"), "failed: RESOURCE_DOES_NOT_EXIST"),
])
def test_mlflow_failures_become_mlflow_unavailable_with_a_readable_cause(ctx, settings, error, words):
    def call(_client):
        raise error

    with pytest.raises(MlflowUnavailable) as e:
        ctx.mlflow_call(call)
    assert words in str(e.value) and settings.mlflow_tracking_uri in str(e.value)


@pytest.mark.parametrize("bug", [TypeError("unsupported operand"), KeyError("run_id"), AttributeError("x")])
def test_a_bug_inside_an_mlflow_call_propagates_as_it_is(ctx, bug):
    def call(_client):
        raise bug

    with pytest.raises(type(bug)) as e:
        ctx.mlflow_call(call)
    assert e.value is bug


def test_a_bug_in_an_mlflow_read_is_500_and_logged_not_503(settings, monkeypatch, caplog):
    def buggy(c, experiment_id, ui):
        return 1 + "row"  # TypeError

    monkeypatch.setattr("service.routes.experiments.results_rows", buggy)
    with client(settings) as c, caplog.at_level(logging.ERROR, logger="service"):
        _one_experiment(c.app.state.ctx)
        r = c.get("/experiments/e1/results")
    assert r.status_code == 500 and r.headers["content-type"] == PROBLEM
    assert r.json()["detail"] == "unexpected TypeError; the service log has the details"
    assert "MLflow" not in r.text
    logged = [rec for rec in caplog.records if rec.exc_info and rec.exc_info[0] is TypeError]
    assert logged and "/experiments/e1/results" in logged[0].getMessage()


def test_an_unreachable_mlflow_read_is_503_naming_it(settings):
    with client(settings) as c:
        _one_experiment(c.app.state.ctx)
        r = c.get("/experiments/e1/results")
        tables = c.get("/tables/rho-ablation")
    for answer in (r, tables):
        assert answer.status_code == 503 and answer.headers["content-type"] == PROBLEM
        body = answer.json()
        assert body["title"] == "Dependency unavailable" and settings.mlflow_tracking_uri in body["detail"]


def test_an_unreachable_ray_is_503_naming_it(settings):
    with client(settings) as c:
        _one_experiment(c.app.state.ctx)
        r = c.get("/experiments/e1/logs")
        missing = c.get("/experiments/e1/logs", params={"attempt": 2})
    assert r.status_code == 503 and r.json()["title"] == "Dependency unavailable"
    assert settings.ray_address in r.json()["detail"]
    assert missing.status_code == 404 and missing.json()["detail"] == "experiment e1 has attempts 1..1, not 2"


# --- the mapping --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("error, status, title, headers, errors", [
    (NotFound("no experiment 'x'"), 404, "Not Found", {}, None),
    (Conflict("already ended: SUCCEEDED"), 409, "Conflict", {}, None),
    (Conflict("still being processed", retry_after=2), 409, "Conflict", {"retry-after": "2"}, None),
    (LimitReached("8 experiments are pending or running", retry_after=30), 429, "Too Many Requests",
     {"retry-after": "30"}, None),
    (InvalidInput("grid", "too many trials"), 422, "Invalid request", {},
     [{"field": "grid", "message": "too many trials"}]),
    (DependencyUnavailable("Ray at http://x is unreachable", retry_after=10), 503, "Dependency unavailable",
     {"retry-after": "10"}, None),
    (MlflowUnavailable("MLflow at http://y is unreachable"), 503, "Dependency unavailable", {}, None),
])
def test_each_domain_error_has_one_status_and_problem_body(error, status, title, headers, errors):
    app = FastAPI()
    problems.install(app)

    @app.get("/boom")
    def boom():
        raise error

    r = TestClient(app).get("/boom")
    assert r.status_code == status and r.headers["content-type"] == PROBLEM
    body = r.json()
    want = {"type": "about:blank", "title": title, "status": status, "detail": str(error), "instance": "/boom"}
    if errors is not None:
        want["errors"] = errors
    assert body == want
    for k, v in headers.items():
        assert r.headers[k] == v
    if not headers:
        assert "retry-after" not in r.headers


def test_invalid_input_prefixes_the_field_unless_given_a_detail():
    assert str(InvalidInput("grid", "too big")) == "grid: too big"
    e = InvalidInput("Idempotency-Key", "used before", detail="this key was used before", title="Key reused")
    assert (str(e), e.title, e.field) == ("this key was used before", "Key reused", "Idempotency-Key")
