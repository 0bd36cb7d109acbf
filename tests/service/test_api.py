"""The API's contract without a cluster: auth, validation naming the field, problem details, idempotency rules,
listing, readiness reporting each dependency. Ray and MLflow point at addresses where nothing listens."""
import copy

import pytest

from jobs.presets import PRESETS
from service import db
from service.db import ExperimentRow, IdempotencyKeyRow
from tests.service.conftest import AUTH, api_client, small_digits

PROBLEM = "application/problem+json"


def test_health_answers_without_dependencies(offline_api):
    assert offline_api.get("/healthz").json() == {"status": "ok"}


def test_readyz_reports_each_dependency_with_its_address(offline_api, offline_settings):
    r = offline_api.get("/readyz")
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["database"]["ok"] is True
    assert checks["ray"]["ok"] is False and offline_settings.ray_address in checks["ray"]["detail"]
    assert checks["mlflow"]["ok"] is False and offline_settings.mlflow_tracking_uri in checks["mlflow"]["detail"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dTpw"}])
def test_changing_state_without_the_token_is_401(offline_api, headers):
    for method, path in (("POST", "/experiments"), ("DELETE", "/experiments/abc")):
        r = offline_api.request(method, path, json=small_digits(), headers=headers)
        assert r.status_code == 401
        assert r.headers["content-type"] == PROBLEM
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_reading_needs_no_token(offline_api):
    assert offline_api.get("/experiments").status_code == 200


def test_a_service_without_an_api_token_refuses_writes(tmp_path):
    from service.settings import Settings
    from tests.service.conftest import api_client, dead_address

    s = Settings(home=tmp_path, ray_address=dead_address(), mlflow_tracking_uri=dead_address(), api_token=None)
    with api_client(s, reconcile=False) as c:
        r = c.post("/experiments", json=small_digits(), headers=AUTH)
    assert r.status_code == 401 and "SIBNN_API_TOKEN" in r.json()["detail"]


@pytest.mark.parametrize("mutate, field", [
    (lambda s: s["grid"].update(rho=[1.5]), "grid.rho"),
    (lambda s: s["grid"].update(arch=["resnet9000"]), "grid.arch"),
    (lambda s: s["recipe"].update(epochs=0), "recipe.epochs"),
    (lambda s: s["dataset"].update(kind="imagenet"), "dataset.root"),
    (lambda s: s.update(colour="blue"), "colour"),
    (lambda s: s.pop("grid"), "grid"),
])
def test_an_invalid_spec_is_422_naming_the_field(offline_api, mutate, field):
    spec = copy.deepcopy(PRESETS["digits"])
    mutate(spec)
    r = offline_api.post("/experiments", json=spec, headers=AUTH)
    assert r.status_code == 422
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == 422 and body["instance"] == "/experiments"
    assert field in [e["field"] for e in body["errors"]], body
    assert field in body["detail"]


def test_a_dataset_root_that_does_not_exist_is_422_naming_dataset_root(offline_api, tmp_path):
    spec = copy.deepcopy(PRESETS["digits"])
    spec["dataset"] = {"kind": "cifar10", "root": str(tmp_path / "nope")}
    spec["grid"]["arch"] = ["vgg_small"]
    r = offline_api.post("/experiments", json=spec, headers=AUTH)
    assert r.status_code == 422
    assert r.json()["errors"] == [{"field": "dataset.root", "message": r.json()["errors"][0]["message"]}]
    assert str(tmp_path / "nope") in r.json()["detail"]


def test_a_body_that_is_not_json_is_a_problem_not_a_stack_trace(offline_api):
    r = offline_api.post("/experiments", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    assert "Traceback" not in r.text


def test_an_unknown_experiment_is_404_problem(offline_api):
    r = offline_api.get("/experiments/doesnotexist")
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    assert "doesnotexist" in r.json()["detail"]


def test_a_post_needs_only_the_database_and_says_why_it_is_not_submitted_yet(offline_settings):
    """MLflow and Ray both unreachable: the POST is accepted (202, PENDING) and a replay of its key returns the same
    experiment; the reconciler's failed submission is a readable reason naming MLflow, and nothing is lost."""
    from service.experiments import reconcile_once

    with api_client(offline_settings, reconcile=False) as c:
        r = c.post("/experiments", json=small_digits(), headers={**AUTH, "Idempotency-Key": "k-down"})
        assert r.status_code == 202 and r.json()["status"] == "PENDING", r.text
        again = c.post("/experiments", json=small_digits(), headers={**AUTH, "Idempotency-Key": "k-down"})
        assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
        assert again.json()["id"] == r.json()["id"]
        ctx = c.app.state.ctx
        assert ctx.wake.is_set()  # the reconciler is woken, not left to its interval
        reconcile_once(ctx)
        exp = c.get(f"/experiments/{r.json()['id']}").json()
        assert exp["status"] == "PENDING" and exp["attempts"][0]["submitted_at"] is None
        assert exp["reason"].startswith("not submitted yet: ") and offline_settings.mlflow_tracking_uri in exp["reason"]
        assert c.get("/experiments").json()["total"] == 1


def _sessions(client):
    return client.app.state.ctx.sessions


def test_an_idempotency_key_reused_with_a_different_body_is_422(offline_api):
    from jobs.spec import parse_spec

    with _sessions(offline_api)() as s:
        s.add(IdempotencyKeyRow(key="k1", fingerprint=parse_spec(small_digits("first")).fingerprint()))
        s.commit()
    r = offline_api.post("/experiments", json=small_digits("second"), headers={**AUTH, "Idempotency-Key": "k1"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "Idempotency-Key"


def test_a_key_an_older_version_left_without_an_experiment_is_taken_over(offline_api):
    """Before accept-then-submit a key row could exist without its experiment (the request died submitting);
    such a row is not an experiment: the same key and body now create one."""
    from jobs.spec import parse_spec

    with _sessions(offline_api)() as s:
        s.add(IdempotencyKeyRow(key="k2", fingerprint=parse_spec(small_digits()).fingerprint()))
        s.commit()
    r = offline_api.post("/experiments", json=small_digits(), headers={**AUTH, "Idempotency-Key": "k2"})
    assert r.status_code == 202 and "idempotent-replayed" not in r.headers
    assert offline_api.get("/experiments").json()["total"] == 1


def test_the_same_key_and_body_replay_the_experiment_it_created(offline_api):
    from jobs.spec import parse_spec

    spec = small_digits()
    with _sessions(offline_api)() as s:
        s.add(ExperimentRow(id="e-replay", name="x", spec_json=parse_spec(spec).model_dump_json(),
                            spec_fingerprint=parse_spec(spec).fingerprint(), n_trials=2, status=db.RUNNING, attempt=1,
                            cancel_requested=False))
        s.add(db.AttemptRow(experiment_id="e-replay", number=1, submission_id="e-replay-1"))
        s.add(IdempotencyKeyRow(key="k3", fingerprint=parse_spec(spec).fingerprint(), experiment_id="e-replay"))
        s.commit()
    r = offline_api.post("/experiments", json=spec, headers={**AUTH, "Idempotency-Key": "k3"})
    assert r.status_code == 202
    assert r.headers["location"] == "/experiments/e-replay"
    assert r.headers["idempotent-replayed"] == "true"
    assert r.json()["id"] == "e-replay"


def _insert(client, n, status=db.SUCCEEDED):
    with _sessions(client)() as s:
        for i in range(n):
            s.add(ExperimentRow(id=f"e{i:02d}", name=f"n{i}", spec_json="{}", spec_fingerprint="f" * 64, n_trials=1,
                                status=status if i % 2 == 0 else db.FAILED, attempt=1, cancel_requested=False))
        s.commit()


def test_listing_filters_by_status_and_paginates(offline_api):
    _insert(offline_api, 5)
    page = offline_api.get("/experiments", params={"limit": 2}).json()
    assert page["total"] == 5 and len(page["items"]) == 2 and page["next"] == "/experiments?limit=2&offset=2"
    last = offline_api.get("/experiments", params={"limit": 2, "offset": 4}).json()
    assert len(last["items"]) == 1 and last["next"] is None
    ok = offline_api.get("/experiments", params={"status": "SUCCEEDED"}).json()
    assert ok["total"] == 3 and {e["status"] for e in ok["items"]} == {"SUCCEEDED"}
    assert offline_api.get("/experiments", params={"status": "DONE"}).status_code == 422


def test_cancelling_a_finished_experiment_is_409(offline_api):
    _insert(offline_api, 1)
    r = offline_api.delete("/experiments/e00", headers=AUTH)
    assert r.status_code == 409 and "SUCCEEDED" in r.json()["detail"]


def test_too_many_active_experiments_is_429(tmp_path, offline_settings):
    from tests.service.conftest import api_client

    with api_client(offline_settings.model_copy(update={"max_active_experiments": 1}), reconcile=False) as c:
        _insert(c, 1, status=db.RUNNING)
        r = c.post("/experiments", json=small_digits(), headers=AUTH)
    assert r.status_code == 429 and r.headers["retry-after"]


def test_models_lists_the_registry_and_summarises_one_model(offline_api):
    models = offline_api.get("/models").json()["models"]
    names = [m["name"] for m in models]
    assert {"digits_cnn", "resnet18", "alexnet"} <= set(names)
    one = offline_api.get("/models/digits_cnn").json()
    t = one["summary"]["totals"]
    assert t["binary_layers"] == 3 and t["params"] == t["binary_params"] + t["fp_params"]
    assert offline_api.get("/models/nope").status_code == 404
    listed = {m["name"]: m for m in offline_api.get("/models").json()["models"]}
    assert listed["digits_cnn"]["summary_totals"] == t  # cached once computed


def test_the_openapi_page_documents_the_spec_and_the_bearer_scheme(offline_api):
    doc = offline_api.get("/openapi.json").json()
    assert "ExperimentSpec" in doc["components"]["schemas"]
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "202" in doc["paths"]["/experiments"]["post"]["responses"]


def test_an_accepted_experiment_is_cancelled_without_asking_ray(offline_api):
    """Never submitted, nothing runs: the cancel needs no Ray (which is down here) and is final at once."""
    exp = offline_api.post("/experiments", json=small_digits(), headers=AUTH).json()
    r = offline_api.delete(f"/experiments/{exp['id']}", headers=AUTH)
    assert r.status_code == 202 and r.json()["status"] == "CANCELLED", r.text
    assert r.json()["reason"] == "cancelled by request"


def test_one_reconciler_at_a_time_holds_an_attempt_s_submission(offline_api):
    """Two API replicas' reconcilers never submit one attempt at once: the claim is a conditional UPDATE with a
    lease; given back on failure, taken over when the lease has run out, never once Ray has the job."""
    store = offline_api.app.state.ctx.store
    exp_id = offline_api.post("/experiments", json=small_digits(), headers=AUTH).json()["id"]
    assert store.claim_submission(exp_id, 1, lease_s=60)
    assert not store.claim_submission(exp_id, 1, lease_s=60)  # the other replica
    assert store.claim_submission(exp_id, 1, lease_s=0)  # the holder died: its lease is over
    store.release_submission(exp_id, 1, "Ray at x is unreachable")
    assert store.get(exp_id).reason == "not submitted yet: Ray at x is unreachable"
    assert store.claim_submission(exp_id, 1, lease_s=60)
    store.record_submitted(exp_id, 1)
    assert store.get(exp_id).reason is None
    assert not store.claim_submission(exp_id, 1, lease_s=0)


def test_an_in_process_app_leaves_the_process_environment_as_it_found_it(offline_settings, monkeypatch):
    """create_app sets MLflow's retry and timeout variables for its process; the tests' in-process apps put them
    back, or a later in-process sweep's Ray workers would inherit one try per MLflow request (a fresh clone's make
    test lost a scheduling trial to that under load)."""
    import os

    from tests.service.conftest import APP_PROCESS_ENV

    for k in APP_PROCESS_ENV:
        monkeypatch.delenv(k, raising=False)
    with api_client(offline_settings, reconcile=False):
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    assert not {k for k in APP_PROCESS_ENV if k in os.environ}
