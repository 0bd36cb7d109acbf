"""Ray token authentication stays on: the head refuses requests without the cluster's token; the service sends it."""
import pytest

from service.ray_jobs import RayJobs, RayUnavailable
from tests.service.conftest import api_client, live_settings

pytestmark = pytest.mark.slow


def test_the_ray_head_refuses_a_client_without_the_token(servers, tmp_path):
    # an empty token given explicitly: no token at all, whatever ~/.ray holds (an empty token *file* is a start-up
    # error: tests/service/test_review_faults.py)
    jobs = RayJobs(live_settings(servers, tmp_path, ray_auth_token=""))
    assert jobs.settings.ray_token is None
    with pytest.raises(RayUnavailable, match="requires a token"):
        jobs.ping()


def test_the_ray_head_rejects_a_wrong_token(servers, tmp_path):
    jobs = RayJobs(live_settings(servers, tmp_path, ray_auth_token="0" * 64))
    with pytest.raises(RayUnavailable, match="rejected the token"):
        jobs.ping()


def test_readyz_is_ready_with_the_clusters_token(servers, tmp_path):
    with api_client(live_settings(servers, tmp_path), reconcile=False) as api:
        r = api.get("/readyz")
    assert r.status_code == 200, r.json()
    assert "token set" in r.json()["checks"]["ray"]["detail"]


def test_readyz_names_a_rejected_token(servers, tmp_path):
    with api_client(live_settings(servers, tmp_path, ray_auth_token="0" * 64), reconcile=False) as api:
        r = api.get("/readyz")
    assert r.status_code == 503
    assert "rejected the token" in r.json()["checks"]["ray"]["detail"]
