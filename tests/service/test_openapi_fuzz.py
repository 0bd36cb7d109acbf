"""Schemathesis over the OpenAPI schema: no generated request makes the API answer 5xx, and every answer conforms
to the document: a declared status code, the declared media type (``application/problem+json`` for problems) and a
body that matches the declared response model.

The API runs as a process against the session's real Ray head, MLflow server and a SQLite file; at most one
experiment may be active (the rest get 429) and whatever the fuzzer managed to launch is cancelled afterwards.
Cases are drawn from schemathesis' per-operation Hypothesis strategies (its pytest plugin's lazy loader does not
run under pytest 9).
"""
import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,  # noqa: E402
                                               response_schema_conformance, status_code_conformance)

from tests.service.conftest import AUTH, cancel_and_wait, start_live_api  # noqa: E402

pytestmark = pytest.mark.slow
EXAMPLES_PER_OPERATION = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]


@pytest.fixture(scope="module")
def fuzzed_api(servers, tmp_path_factory):
    api = start_live_api(servers, tmp_path_factory.mktemp("fuzz"), max_active_experiments=1, max_trials=4)
    yield api
    try:
        for exp in httpx.get(f"{api.url}/experiments", params={"limit": 500}, timeout=30).json()["items"]:
            if exp["status"] in ("PENDING", "RUNNING"):
                cancel_and_wait(servers, lambda: httpx.delete(f"{api.url}/experiments/{exp['id']}", headers=AUTH,
                                                              timeout=60), exp["ray_submission_id"])
    finally:
        api.stop()


def test_no_generated_request_gets_a_5xx_and_every_answer_conforms(fuzzed_api):
    schema = schemathesis.openapi.from_url(f"{fuzzed_api.url}/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    # GET /models?summary=true computes every model's summary (~30 s of CPU once): test_api.py covers /models.
    operations = [op for op in operations if not op.path.startswith("/models")]
    assert {op.path for op in operations} >= {"/experiments", "/experiments/{experiment_id}", "/tables/rho-ablation"}
    seen: list[tuple] = []
    for op in operations:
        @given(case=op.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def check(case):
            response = case.call(base_url=fuzzed_api.url, headers=AUTH, timeout=60)
            seen.append((op.method.upper(), op.path, response.status_code))
            assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text[:500])
            case.validate_response(response, checks=CHECKS, headers=AUTH)  # raises naming the failed check

        check()
    codes = {c for *_, c in seen}
    assert 422 in codes and 200 in codes  # it reached both validation and real answers
    # the answers checked against a response model include real ones, not only problems
    real = {("GET", "/experiments", 200), ("GET", "/tables/paper-comparison", 200), ("GET", "/healthz", 200)}
    assert real <= set(seen)
