"""The response models (service/schemas.py): the OpenAPI page declares one for every route, errors are documented
as application/problem+json, the models parse exactly what the service builds (no key added or lost), and the
client rejects an answer that does not match them."""
import json
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from mlflow.entities import Metric

from jobs import tracking
from jobs.presets import preset
from service import schemas
from console.client import Api, ApiError
from service.results import paper_comparison, results_rows, rho_ablation, trial_status
from tests.service.conftest import AUTH

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def _operations(doc):
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            yield method.upper(), path, op


def test_every_route_declares_its_answer_and_its_problems(offline_api):
    doc = offline_api.get("/openapi.json").json()
    ops = list(_operations(doc))
    assert len(ops) >= 12
    for method, path, op in ops:
        ok = [c for c in op["responses"] if c.startswith("2")]
        assert len(ok) == 1, (method, path)
        content = op["responses"][ok[0]]["content"]
        if path.endswith("/logs"):
            assert set(content) == {"text/plain"} and content["text/plain"]["schema"] == {"type": "string"}
        else:  # a named model, not FastAPI's empty "any JSON" schema
            assert set(content) == {"application/json"}, (method, path)
            assert content["application/json"]["schema"]["$ref"].startswith("#/components/schemas/"), (method, path)
        for code, resp in op["responses"].items():
            if code.startswith("2") or (path == "/readyz" and code == "503"):
                continue
            assert resp["content"] == {"application/problem+json": {"schema": PROBLEM_REF}}, (method, path, code)
        if op.get("parameters") or op.get("requestBody"):
            assert "422" in op["responses"], (method, path)
    schemas_ = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas_  # FastAPI's own 422 shape is never what the API sends
    errors = schemas_["Problem"]["properties"]["errors"]["anyOf"][0]
    assert errors["items"] == {"$ref": "#/components/schemas/FieldError"}
    for name in ("Experiment", "ExperimentDetail", "ExperimentPage", "TrialStatus", "Results", "ResultRow",
                 "RhoAblationTable", "PaperComparisonTable", "ModelList", "ModelDetail", "Readiness"):
        assert name in schemas_, name


@pytest.mark.parametrize("method, path, kw, status", [
    ("GET", "/experiments/nope", {}, 404),
    ("GET", "/experiments", {"params": {"limit": 0}}, 422),
    ("POST", "/experiments", {"json": {"name": "x"}}, 422),
    ("POST", "/experiments", {"content": b"{}", "headers": {"Content-Type": "text/csv"}}, 422),
    ("DELETE", "/experiments/abc", {"headers": {"Authorization": "Bearer wrong"}}, 401),
    ("GET", "/models/nope", {}, 404),
])
def test_every_problem_the_api_sends_parses_as_problem(offline_api, method, path, kw, status):
    kw = {**kw, "headers": {**AUTH, **kw.get("headers", {})}}
    r = offline_api.request(method, path, **kw)
    assert r.status_code == status and r.headers["content-type"] == schemas.PROBLEM_JSON
    p = schemas.Problem.model_validate(r.json())
    assert p.status == status and p.instance == path and p.detail
    if status == 422:
        assert p.errors and all(e.field for e in p.errors)


def test_listed_and_described_experiments_parse_without_losing_a_key(offline_api):
    from service import db
    from service.db import ExperimentRow

    with offline_api.app.state.ctx.sessions() as s:
        s.add(ExperimentRow(id="e-typed", name="n", spec_json=preset("digits").model_dump_json(),
                            spec_fingerprint="f" * 64, n_trials=2, status=db.RUNNING, attempt=1, cancel_requested=False))
        s.add(db.AttemptRow(experiment_id="e-typed", number=1, submission_id="e-typed-1"))
        s.commit()
    page = offline_api.get("/experiments").json()
    assert schemas.ExperimentPage.model_validate(page).model_dump(mode="json", exclude_unset=True) == page
    one = offline_api.get("/experiments/e-typed").json()
    parsed = schemas.ExperimentDetail.model_validate(one)
    assert parsed.model_dump(mode="json", exclude_unset=True) == one
    assert parsed.trials is None and "127.0.0.1" in parsed.trials_error  # MLflow is down here: said, not a 500
    assert parsed.attempts[0].ray_submission_id == "e-typed-1"


@pytest.fixture(scope="module")
def logged_sweep(tmp_path_factory):
    """A finished digits sweep laid out as the jobs write it, in a local MLflow store (no server)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    c = tracking.client(uri)
    exp_id = uuid.uuid4().hex[:12]
    spec = preset("digits", recipe={"epochs": 1})
    parent = tracking.ensure_parent_run(c, exp_id, spec)
    for i, t in enumerate(spec.trials()):
        run = tracking.ensure_trial_run(c, exp_id, parent, spec, t)
        acc = 70.0 + i
        tracking.log_epoch(c, run, 1, {"epoch": 1, "val_top1": acc, "val_top5": 99.0, "sparsity_mean": 0.6})
        c.log_batch(run, metrics=[Metric(k, v, int(time.time() * 1000), 0) for k, v in
                                  {"final_val_top1": acc, "final_val_top5": 99.0, "best_val_top1": acc,
                                   "best_val_top5": 99.0, "wall_time_s": 3.0}.items()])
        tracking.set_trial_state(c, run, "FINISHED")
    return c, exp_id, spec


def _roundtrip(model, data):
    data = json.loads(json.dumps(data))  # as it goes over the wire (tuples become lists)
    assert model.model_validate(data).model_dump(mode="json", exclude_unset=True) == data


def test_results_trials_and_tables_from_real_runs_match_their_models_exactly(logged_sweep):
    c, exp_id, spec = logged_sweep
    rows = results_rows(c, exp_id, "http://mlflow.example")
    assert len(rows) == len(spec.trials())
    _roundtrip(schemas.Results, {"experiment_id": exp_id, "status": "SUCCEEDED", "rows": rows})
    trials = trial_status(c, exp_id, spec, "http://mlflow.example")
    assert {t["state"] for t in trials} == {"FINISHED"}
    for t in trials:
        _roundtrip(schemas.TrialStatus, t)
    rho = rho_ablation(c, [exp_id])
    assert rho["rows"] and rho["claims"]
    _roundtrip(schemas.RhoAblationTable, rho)
    comparison = paper_comparison(c, [exp_id])
    assert comparison["rows"] and comparison["claims"]
    _roundtrip(schemas.PaperComparisonTable, comparison)


def test_a_model_summary_matches_its_model():
    from service import catalog

    _roundtrip(schemas.ModelDetail, {**catalog.info("digits_cnn"), "binarizer": "sibnn",
                                     "summary": catalog.summary("digits_cnn")})


def test_the_client_rejects_an_answer_that_breaks_the_schema():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/experiments/e1":
            return httpx.Response(200, json={"id": "e1", "status": "DONE"})
        return httpx.Response(404, json={"type": "about:blank", "title": "Not Found", "status": 404,
                                         "detail": "experiment x not found", "instance": request.url.path},
                              headers={"content-type": schemas.PROBLEM_JSON})

    api = Api("http://api.test", "t")
    api.http = httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(handler))
    with pytest.raises(ApiError) as e:
        api.get("e1")
    assert e.value.status == 502 and "ExperimentDetail" in str(e.value) and "GET /experiments/e1" in str(e.value)
    with pytest.raises(ApiError) as e:
        api.results("x")
    assert e.value.status == 404 and e.value.problem["detail"] == "experiment x not found"


def test_the_models_and_the_client_import_no_torch_ray_or_mlflow():
    code = ("import sys, service.schemas, console.client; "
            "print(sorted(m for m in ('torch', 'ray', 'mlflow', 'sibnn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_generated_requests_get_answers_that_conform_when_ray_and_mlflow_are_down(offline_api):
    """Schemathesis in process, a few cases per route (the live run is test_openapi_fuzz.py): with Ray and MLflow
    unreachable the routes answer 503 problems, which must be documented like every other answer."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                                   status_code_conformance)

    schema = schemathesis.openapi.from_asgi("/openapi.json", offline_api.app)
    seen = []
    for result in schema.get_all_operations():
        op = result.ok()

        @given(case=op.as_strategy())
        @settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            if op.path == "/models":
                case.query = {"summary": "false"}  # every model's summary is ~30 s of CPU; /models/{name} runs one
            response = case.call(headers=AUTH)
            seen.append((op.path, response.status_code))
            case.validate_response(response, checks=[status_code_conformance, content_type_conformance,
                                                     response_schema_conformance], headers=AUTH)

        check()
    codes = {c for _, c in seen}
    assert {200, 422, 503} <= codes, codes
    assert ("/readyz", 503) in seen and ("/tables/rho-ablation", 503) in seen


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_client_parses_the_apis_own_answers(offline_api):
    from service import db
    from service.db import ExperimentRow

    with offline_api.app.state.ctx.sessions() as s:
        s.add(ExperimentRow(id="e-client", name="n", spec_json=preset("digits").model_dump_json(),
                            spec_fingerprint="f" * 64, n_trials=2, status=db.FAILED, attempt=1, cancel_requested=False,
                            reason="boom"))
        s.add(db.AttemptRow(experiment_id="e-client", number=1, submission_id="e-client-1"))
        s.commit()
    api = Api("http://testserver", "test-api-token")
    offline_api.headers.update(AUTH)
    api.http = offline_api  # the TestClient is an httpx.Client: the same code path as over the network
    page = api.list()
    assert page["total"] == 1 and page["items"][0]["reason"] == "boom" and page["next"] is None
    assert api.get("e-client")["attempts"][0]["ray_submission_id"] == "e-client-1"
    ready = api.ready()
    assert ready["status"] == "not ready" and ready["checks"]["database"]["ok"] is True
    with pytest.raises(ApiError) as e:
        api.cancel("e-client")  # FAILED: nothing to cancel
    assert e.value.status == 409 and e.value.problem["instance"] == "/experiments/e-client"
    with pytest.raises(ApiError) as e:
        api.table("paper-comparison")
    assert e.value.status == 503 and "MLflow" in e.value.problem["detail"]
