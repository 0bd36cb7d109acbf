"""readyz against a real MLflow server that refuses the service's Host header (MLflow ≥ 3.5 checks it on API calls
but not on /health, so a /health-only probe would call such a server ready)."""
import pytest

from tests.service.conftest import api_client, live_settings

pytestmark = pytest.mark.slow


def test_readyz_names_an_mlflow_host_header_refusal_and_the_fix(servers, tmp_path):
    port = servers.mlflow.url.rsplit(":", 1)[1]
    uri = f"http://0.0.0.0:{port}"  # the same server, reached with a Host header outside its --allowed-hosts
    with api_client(live_settings(servers, tmp_path, mlflow_tracking_uri=uri), reconcile=False) as api:
        r = api.get("/readyz")
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["mlflow"]["ok"] is False
    assert "refuses this Host header (403)" in checks["mlflow"]["detail"]
    assert "--allowed-hosts" in checks["mlflow"]["detail"]
    assert checks["ray"]["ok"] is True and checks["database"]["ok"] is True
