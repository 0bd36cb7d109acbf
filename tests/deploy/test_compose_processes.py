"""The compose services' own command lines and environment, run as local processes: PostgreSQL initialised by the
compose init script, `mlflow server --app-name basic-auth` on it, `ray start --head` and the API's uvicorn command,
each through the image's entrypoint. Container names become 127.0.0.1, ports become free ones, container paths
become private temp dirs, /run/secrets/* the files `make secrets` writes — nothing else changes, so what is proven is
the compose wiring: every secret arrives from its file (PostgreSQL checks the passwords, MLflow asks for its login,
Ray for its token), the API's /readyz reports the database, Ray and MLflow OK, MLflow answers the compose Host
header, artifacts go through MLflow's proxy, and a Ray job logs into MLflow with the login its node was given."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

from console import stack
from tests.deploy.deployment import DOCKER, REPO, command, environment, load_compose, make_secrets
from tests.postgres import PG_BIN, start_postgres

pytestmark = pytest.mark.slow

PORT_FLAGS = {"ray-head": ("--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port"),
              "mlflow": ("--port",), "api": ("--port",)}
NAMED = {"postgres": 5432, "mlflow": 5000, "ray-head": 8265}  # service → the port other services dial


class Translation:
    """Container world → this machine: service names, ports, paths and the image's executables."""

    def __init__(self, root: Path, ports: dict[str, int]):
        self.ports = ports  # service → local port of NAMED[service]
        ray_tmp = Path(tempfile.mkdtemp(prefix="sibnn-dr-", dir="/tmp"))  # short: Ray's socket path limit
        self.paths = {"/var/lib/sibnn/runs": root / "runs", "/var/lib/sibnn/api": root / "api-home",
                      "/mlflow/artifacts": root / "mlflow-artifacts", "/tmp/ray": ray_tmp,
                      "/opt/venv/bin/python": Path(sys.executable), "/app": REPO}
        for p in self.paths.values():
            if not p.exists():
                p.mkdir(parents=True)
        # `make secrets` into the private root; a secret holding a compose address (the database URL) is translated
        self.secrets = make_secrets(root / "secrets")
        for name, value in self.secrets.items():
            (root / "secrets" / name).write_text(self.value(value) + "\n")
            self.paths[f"/run/secrets/{name}"] = root / "secrets" / name
        # the MLflow image's auth config (docker/mlflow/basic_auth.ini), its database address translated
        ini = root / "basic_auth.ini"
        ini.write_text("\n".join(self.value(line) if line.startswith("database_uri") else line
                                 for line in (DOCKER / "mlflow" / "basic_auth.ini").read_text().splitlines()))
        self.paths["/etc/mlflow/basic_auth.ini"] = ini

    def value(self, v: str) -> str:
        for service, port in self.ports.items():
            v = v.replace(f"{service}:{NAMED[service]}", f"127.0.0.1:{port}")
        if v == "0.0.0.0":
            return "127.0.0.1"
        return str(getattr(self, "paths", {}).get(v, v))

    def argv(self, service: str, argv: list[str], ports: dict[str, int]) -> list[str]:
        out = [str(stack.BIN / argv[0]) if (stack.BIN / argv[0]).exists() else argv[0]]
        for i, a in enumerate(argv[1:], 1):
            if argv[i - 1] in ports:
                out.append(str(ports[argv[i - 1]]))
            elif argv[i - 1] == "--allowed-hosts":
                # Host headers: the compose names stay (checked below); clients here dial 127.0.0.1:<port> instead
                # of mlflow:5000, so the translated form of each service name is allowed as well.
                hosts = a.split(",")
                out.append(",".join(hosts + [self.value(h) for h in hosts if self.value(h) != h]))
            else:
                out.append(self.value(a))
        return out

    def env(self, compose_env: dict[str, str]) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "SIBNN_"))}
        base.update({k: self.value(v) for k, v in compose_env.items()})
        base["RAY_USAGE_STATS_ENABLED"] = "0"
        return base


def _spawn(name: str, argv: list[str], env: dict, logs: Path) -> stack.Server:
    return stack.spawn(name, argv, logs / f"{name}.log", env, cwd=str(REPO))


@pytest.fixture(scope="module")
def compose_stack(tmp_path_factory):
    if not (PG_BIN / "initdb").exists():
        if os.environ.get("CI"):  # `make test` installs postgresql-15: in CI a missing server is a failure
            pytest.fail(f"PostgreSQL server binaries not found in {PG_BIN}")
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN} (install Debian's postgresql-15)")
    services = load_compose()["services"]
    root = tmp_path_factory.mktemp("compose")
    logs = root / "logs"
    logs.mkdir()
    procs: list[stack.Server] = []
    pg = start_postgres()
    tr = None
    try:
        ports = {"postgres": pg.port, "mlflow": stack.free_port(), "ray-head": stack.free_port()}
        tr = Translation(root, ports)
        # postgres: the compose init script, with the compose environment, against the private cluster
        init_env = {**tr.env(environment(services["postgres"])), "PGHOST": "127.0.0.1", "PGPORT": str(pg.port),
                    "PATH": f"{PG_BIN}:{os.environ['PATH']}"}
        r = subprocess.run(["sh", str(DOCKER / "postgres" / "init-databases.sh")], env=init_env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        # the private cluster trusts local connections; from here on the two roles must bring their passwords
        hba = pg.data_dir / "data" / "pg_hba.conf"
        hba.write_text("host sibnn sibnn 127.0.0.1/32 scram-sha-256\nhost mlflow mlflow 127.0.0.1/32 scram-sha-256\n"
                       + hba.read_text())
        pg._run(str(PG_BIN / "pg_ctl"), "-D", str(pg.data_dir / "data"), "reload")

        head_ports = {"--port": stack.free_port(), "--dashboard-port": ports["ray-head"],
                      "--ray-client-server-port": stack.free_port(), "--dashboard-agent-listen-port": stack.free_port()}
        ray_argv = tr.argv("ray-head", command(services["ray-head"]), head_ports)
        procs.append(_spawn("ray-head", ["sh", str(DOCKER / "entrypoint.sh"), *ray_argv],
                            tr.env(environment(services["ray-head"])), logs))
        ml_argv = tr.argv("mlflow", command(services["mlflow"]), {"--port": ports["mlflow"]})
        procs.append(_spawn("mlflow", ["sh", str(DOCKER / "entrypoint.sh"), *ml_argv],
                            tr.env(environment(services["mlflow"])), logs))
        stack.wait_http(procs[-1], f"http://127.0.0.1:{ports['mlflow']}/health", 180)
        stack.wait_http(procs[0], f"http://127.0.0.1:{ports['ray-head']}/api/gcs_healthz", 180)

        api_port = stack.free_port()
        api_argv = tr.argv("api", command(services["api"]), {"--port": api_port})
        procs.append(_spawn("api", ["sh", str(DOCKER / "entrypoint.sh"), *api_argv],
                            tr.env(environment(services["api"])), logs))
        api = f"http://127.0.0.1:{api_port}"
        stack.wait_http(procs[-1], f"{api}/healthz", 90)
        yield {"api": api, "mlflow": f"http://127.0.0.1:{ports['mlflow']}", "root": root, "argv": ray_argv,
               "secrets": tr.secrets, "pg_port": pg.port,
               "logs": logs, "ray_dashboard": f"http://127.0.0.1:{ports['ray-head']}",
               "ray_agent": f"http://127.0.0.1:{head_ports['--dashboard-agent-listen-port']}"}
    finally:
        for p in reversed(procs):
            p.stop()
        pg.stop()
        if tr is not None:
            shutil.rmtree(tr.paths["/tmp/ray"], ignore_errors=True)


def test_readyz_reports_the_postgres_database_ray_with_the_token_and_mlflow(compose_stack):
    for _ in range(60):  # the dashboard's job API comes up a little after the GCS
        r = httpx.get(f"{compose_stack['api']}/readyz", timeout=30)
        if r.status_code == 200:
            break
        time.sleep(1)
    body = r.json()
    assert r.status_code == 200, (body, (compose_stack["logs"] / "api.log").read_text()[-2000:])
    checks = body["checks"]
    assert checks["database"]["ok"] and "postgresql+psycopg://sibnn:" in checks["database"]["detail"]
    assert checks["database"]["detail"].endswith("/sibnn")
    assert checks["ray"]["ok"] and "token set" in checks["ray"]["detail"]
    assert checks["mlflow"]["ok"]


def test_the_ray_head_refuses_requests_without_the_shared_token(compose_stack):
    url = f"{compose_stack['ray_dashboard']}/api/jobs/"
    assert httpx.get(url, timeout=10).status_code == 401
    ok = httpx.get(url, headers={"Authorization": f"Bearer {compose_stack['secrets']['ray_auth_token']}"}, timeout=10)
    assert ok.status_code == 200


def test_the_kuberay_probe_endpoint_answers_without_a_token_on_the_agent_port(compose_stack):
    # infra/raycluster.yaml's HTTP probes: GET /api/healthz on the dashboard agent's port, no token, raylet + GCS
    for _ in range(60):
        r = httpx.get(f"{compose_stack['ray_agent']}/api/healthz", timeout=10)
        if r.status_code == 200:
            break
        time.sleep(1)
    assert r.status_code == 200, r.text
    assert "raylet: success" in r.text and "gcs: success" in r.text


def _admin(compose_stack) -> tuple[str, str]:
    return "admin", compose_stack["secrets"]["mlflow_admin_password"]


@pytest.fixture
def mlflow_login(compose_stack, monkeypatch):
    """MLflow's client as the API and the Ray nodes run it: the login the entrypoint exports from the secret file."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", compose_stack["secrets"]["mlflow_admin_password"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", compose_stack["mlflow"])
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def test_mlflow_asks_for_a_login_on_its_rest_api_and_its_ui(compose_stack):
    base = compose_stack["mlflow"]
    api = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
    for url in (api, f"{base}/", f"{base}/ajax-api/2.0/mlflow/experiments/search?max_results=1"):
        r = httpx.get(url, timeout=10)
        assert r.status_code == 401, (url, r.status_code)
        assert r.headers.get("www-authenticate", "").lower().startswith("basic"), url  # the browser's login box
        assert httpx.get(url, auth=("admin", "wrong"), timeout=10).status_code == 401, url
    assert httpx.get(api, auth=_admin(compose_stack), timeout=10).status_code == 200
    assert httpx.get(f"{base}/", auth=_admin(compose_stack), timeout=10).status_code == 200  # the UI, logged in
    assert httpx.get(f"{base}/health", timeout=10).status_code == 200  # the healthcheck needs no login


def test_the_projects_tracking_code_works_with_the_login_and_fails_without(compose_stack, mlflow_login, monkeypatch):
    from mlflow.exceptions import MlflowException

    from jobs import tracking

    c = tracking.client()
    exp = tracking.ensure_experiment(c, f"dep{uuid.uuid4().hex[:8]}")
    run = c.create_run(exp)
    tracking.log_epoch(c, run.info.run_id, 1, {"val_top1": 0.5})
    assert tracking.logged_epochs(c, run.info.run_id) == {1}
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    monkeypatch.setenv("HOME", str(compose_stack["root"]))  # no ~/.mlflow/credentials to fall back on
    with pytest.raises(MlflowException, match="401|nauthorized|credentials"):
        tracking.client().search_experiments()


def test_the_apis_mlflow_client_logs_in_with_the_secret_file(compose_stack):
    # GET /tables/rho-ablation reads every trial run through the API's MlflowClient
    r = httpx.get(f"{compose_stack['api']}/tables/rho-ablation",
                  headers={"Authorization": f"Bearer {compose_stack['secrets']['read_token']}"}, timeout=30)
    assert r.status_code == 200, r.text


def test_a_ray_job_logs_into_mlflow_with_the_login_its_node_got_from_the_secret_file(compose_stack):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(compose_stack["ray_dashboard"],
                                 headers={"Authorization": f"Bearer {compose_stack['secrets']['ray_auth_token']}"})
    code = ("import mlflow; c = mlflow.MlflowClient(); e = c.create_experiment('rayjob-' + __import__('uuid')"
            ".uuid4().hex[:8]); print('LOGGED-IN', c.get_experiment(e).name)")
    job = client.submit_job(entrypoint=f"{sys.executable} -c \"{code}\"",
                            runtime_env={"env_vars": {"MLFLOW_TRACKING_URI": compose_stack["mlflow"]}})
    deadline = time.time() + 120
    while client.get_job_status(job) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.time() < deadline, client.get_job_logs(job)
        time.sleep(1)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs[-2000:]
    assert "LOGGED-IN rayjob-" in logs
    assert compose_stack["secrets"]["mlflow_admin_password"] not in client.get_job_info(job).model_dump_json()


def test_postgres_checks_the_passwords_from_the_secret_files(compose_stack):
    import psycopg

    dsn = f"host=127.0.0.1 port={compose_stack['pg_port']} dbname=sibnn user=sibnn"
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(dsn, password="wrong", connect_timeout=10).close()
    psycopg.connect(dsn, password=compose_stack["secrets"]["sibnn_db_password"], connect_timeout=10).close()


def test_mlflow_answers_the_compose_host_names_and_refuses_others(compose_stack):
    url = f"{compose_stack['mlflow']}/api/2.0/mlflow/experiments/search?max_results=1"
    for host in ("mlflow:5000", "mlflow", "localhost:5000"):
        assert httpx.get(url, headers={"Host": host}, auth=_admin(compose_stack), timeout=10).status_code == 200, host
    assert httpx.get(url, headers={"Host": "evil.example:5000"}, auth=_admin(compose_stack),
                     timeout=10).status_code == 403
    # /health says 200 whatever the Host: it alone cannot prove the allowed hosts
    assert httpx.get(f"{compose_stack['mlflow']}/health", headers={"Host": "evil.example:5000"},
                     timeout=10).status_code == 200


def test_artifacts_travel_through_mlflows_proxy_onto_its_volume(compose_stack, mlflow_login):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=compose_stack["mlflow"])
    exp = client.create_experiment(f"deploy-{uuid.uuid4().hex[:8]}")
    run = client.create_run(exp)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    client.log_text(run.info.run_id, "hello", "note.txt")
    stored = list((compose_stack["root"] / "mlflow-artifacts").rglob("note.txt"))
    assert [p.read_text() for p in stored] == ["hello"]


def test_state_changing_requests_need_the_api_token_from_env(compose_stack):
    r = httpx.post(f"{compose_stack['api']}/experiments", json={}, timeout=30)
    assert r.status_code == 401
    r = httpx.post(f"{compose_stack['api']}/experiments", json={},
                   headers={"Authorization": f"Bearer {compose_stack['secrets']['api_token']}"}, timeout=30)
    assert r.status_code == 422  # past the token check: the empty spec is what is refused
