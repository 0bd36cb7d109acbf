"""Faults found by review (issue 23), each pinned by a behaviour: a Ray that accepts connections and never answers
costs a bounded wait and a 503 naming it, not the API; one Ray address; every secret file read and checked at
start-up; the embedded stack's secrets private from their first byte; the bearer scheme declared on reads; a client
that reads a newer server's answers."""
from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
import time

import httpx
import pytest
from pydantic import ValidationError

from service.settings import Settings
from tests.service.conftest import API_TOKEN, AUTH, api_client, dead_address, small_digits


# --- 1. a Ray that accepts connections and never answers -----------------------------------------------------------

class SilentServer:
    """A TCP server that accepts every connection and never sends a byte: a hung Ray head. ``close`` drops the
    connections, so whatever still waits on one (today's code, without a timeout) wakes up and the test ends."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.sock.settimeout(0.05)
        self.address = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="silent-ray", daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(conn)

    def wait_for(self, n: int, within: float = 30.0) -> bool:
        deadline = time.monotonic() + within
        while len(self.connections) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(self.connections) >= n

    def close(self):
        self._stop.set()
        self._thread.join(5)
        for c in self.connections:
            c.close()
        self.sock.close()

    @contextlib.contextmanager
    def then_closed(self):
        """Close before the block's own exits run: a request still waiting on it (a regression) ends, so the test
        fails on its assertion instead of hanging in the test client's shutdown."""
        try:
            yield self
        finally:
            self.close()


@pytest.fixture
def silent_ray():
    server = SilentServer()
    yield server
    server.close()


def _settings(tmp_path, **kw) -> Settings:
    base = dict(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'service.db'}",
                ray_address=dead_address(), mlflow_tracking_uri=dead_address(), api_token=API_TOKEN,
                reconcile_interval_s=3600, mlflow_timeout_s=2)
    return Settings(**{**base, **kw})


class Request(threading.Thread):
    """One request in its own thread: the test can look at the others while it waits."""

    def __init__(self, client, path: str):
        super().__init__(daemon=True)
        self.client, self.path, self.response = client, path, None

    def run(self):
        self.response = self.client.get(self.path)


@pytest.mark.timeout(120)  # a regression hangs: fail in bounded time
def test_a_ray_that_never_answers_gets_503_naming_it_while_database_routes_keep_answering(tmp_path, silent_ray):
    settings = _settings(tmp_path, ray_address=silent_ray.address, ray_timeout_s=5, ray_max_calls=2)
    with api_client(settings, reconcile=False) as c, silent_ray.then_closed():
        exp_id = c.post("/experiments", json=small_digits(), headers=AUTH).json()["id"]
        logs = f"/experiments/{exp_id}/logs"
        waiting = [Request(c, logs) for _ in range(2)]
        for r in waiting:
            r.start()
        assert silent_ray.wait_for(2), (f"only {len(silent_ray.connections)} of 2 concurrent Ray calls reached Ray: "
                                        "the second waits on the first")
        # Both slots are taken: a third Ray call is refused at once, while the other two still wait.
        third = c.get(logs)
        assert third.status_code == 503, third.text
        assert silent_ray.address in third.json()["detail"]
        assert "2 calls already waiting" in third.json()["detail"]
        # Routes that need only the database answer meanwhile.
        for _ in range(5):
            assert c.get("/experiments").status_code == 200
        assert all(r.is_alive() for r in waiting), "the Ray calls ended before the database routes were asked"
        for r in waiting:
            r.join(60)
            assert not r.is_alive(), f"GET {logs} had no answer after 60 s: a hung Ray hangs the API"
            assert r.response.status_code == 503, r.response.text
            detail = r.response.json()["detail"]
            assert silent_ray.address in detail and "did not answer within 5 s" in detail, detail


@pytest.mark.timeout(120)  # a regression hangs: fail in bounded time
def test_readyz_reports_a_ray_that_never_answers_within_the_timeout(tmp_path, silent_ray):
    settings = _settings(tmp_path, ray_address=silent_ray.address, ray_timeout_s=1)
    with api_client(settings, reconcile=False) as c, silent_ray.then_closed():
        r = c.get("/readyz")
    assert r.status_code == 503
    ray = r.json()["checks"]["ray"]
    assert ray["ok"] is False
    assert silent_ray.address in ray["detail"] and "did not answer within 1 s" in ray["detail"], ray["detail"]


@pytest.mark.timeout(120)  # a regression hangs: fail in bounded time
def test_a_timed_out_ray_call_gives_its_slot_back(tmp_path, silent_ray):
    """The HTTP requests under a Ray call time out too, not only the wait for them: a hung Ray holds a call slot
    for a bounded time, so calls reach Ray again instead of being refused for ever."""
    from service.ray_jobs import RayJobs, RayUnavailable

    jobs = RayJobs(_settings(tmp_path, ray_address=silent_ray.address, ray_timeout_s=1, ray_max_calls=1))
    with pytest.raises(RayUnavailable, match="did not answer within 1 s"):
        jobs.state("e1-1")
    messages = []
    for _ in range(30):
        with pytest.raises(RayUnavailable) as e:
            jobs.state("e1-1")
        messages.append(str(e.value))
        if "did not answer within" in messages[-1]:
            break
        time.sleep(1)
    assert "did not answer within 1 s" in messages[-1], messages[-3:]
    assert len(silent_ray.connections) >= 2  # the second answer came from Ray's silence, not from the gate


@pytest.mark.timeout(120)  # a regression hangs: fail in bounded time
def test_ping_of_a_ray_that_never_answers_is_bounded(tmp_path, silent_ray):
    from service.ray_jobs import RayJobs, RayUnavailable

    jobs = RayJobs(_settings(tmp_path, ray_address=silent_ray.address, ray_timeout_s=1))
    with pytest.raises(RayUnavailable, match=f"Ray at {silent_ray.address} did not answer within 1 s"):
        jobs.ping()


def test_the_ray_call_settings_have_their_documented_defaults(monkeypatch):
    for k in ("SIBNN_RAY_TIMEOUT_S", "SIBNN_RAY_MAX_CALLS", "SIBNN_REQUEST_TIMEOUT_S"):
        monkeypatch.delenv(k, raising=False)
    s = Settings()
    assert (s.ray_timeout_s, s.ray_max_calls) == (10.0, 8)
    monkeypatch.setenv("SIBNN_RAY_TIMEOUT_S", "3")
    monkeypatch.setenv("SIBNN_RAY_MAX_CALLS", "2")
    assert (Settings().ray_timeout_s, Settings().ray_max_calls) == (3.0, 2)


# --- 2. one Ray address --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ray_var", ["RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"])
def test_a_ray_variable_that_would_override_sibnn_ray_address_stops_the_start(monkeypatch, ray_var):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("SIBNN_RAY_ADDRESS", "http://ray-head:8265")
    monkeypatch.setenv(ray_var, "http://elsewhere:8265")
    both = f"{ray_var}=http://elsewhere:8265 and SIBNN_RAY_ADDRESS=http://ray-head:8265 differ"
    with pytest.raises(ValidationError, match=both):
        Settings()
    monkeypatch.setenv(ray_var, "http://ray-head:8265/")  # the same address: one setting, nothing to choose
    assert Settings().ray_address == "http://ray-head:8265"


def test_ray_address_alone_is_the_address_everything_uses(monkeypatch):
    from ray.dashboard.utils import get_address_for_submission_client

    monkeypatch.delenv("SIBNN_RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "http://ray-head:8265")
    s = Settings()
    # what /readyz asks and what Ray's job client would use are one address
    assert s.ray_address == get_address_for_submission_client(s.ray_address) == "http://ray-head:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # a GCS address: not what the API can ask
    with pytest.raises(ValidationError, match="RAY_ADDRESS=10.0.0.5:6379.*SIBNN_RAY_ADDRESS"):
        Settings()


# --- 3. every secret file read and checked at start-up ------------------------------------------------------------

SECRET_FILE_VARS = ["SIBNN_API_TOKEN_FILE", "SIBNN_READ_TOKEN_FILE", "SIBNN_DATABASE_URL_FILE",
                    "SIBNN_RAY_AUTH_TOKEN_FILE"]


@pytest.fixture
def no_secrets(monkeypatch, tmp_path):
    for k in ("SIBNN_API_TOKEN", "SIBNN_READ_TOKEN", "SIBNN_DATABASE_URL", "SIBNN_RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN",
              "RAY_AUTH_TOKEN_PATH", "SIBNN_RAY_AUTH_TOKEN_PATH", "SIBNN_READ_TOKEN_PATH", "SIBNN_API_TOKEN_PATH",
              "SIBNN_DATABASE_URL_PATH", *SECRET_FILE_VARS):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # Ray's default ~/.ray/auth_token: absent, and that is fine


@pytest.mark.parametrize("var", SECRET_FILE_VARS)
def test_a_missing_or_empty_secret_file_stops_the_start_naming_its_variable(monkeypatch, tmp_path, no_secrets, var):
    monkeypatch.setenv(var, str(tmp_path / "absent"))
    with pytest.raises(ValidationError, match=f"{var}=.*absent: cannot read it"):
        Settings()
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv(var, str(tmp_path / "empty"))
    with pytest.raises(ValidationError, match=f"{var}=.*empty is empty"):
        Settings()


def test_rays_default_token_file_stays_optional(tmp_path, no_secrets):
    assert Settings().ray_token is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("ray-default\n")
    assert Settings().ray_token == "ray-default"


def test_the_read_token_is_read_at_start_up_and_a_missing_file_never_reaches_a_request(tmp_path, no_secrets):
    with pytest.raises(ValidationError, match="SIBNN_READ_TOKEN_FILE=.*absent: cannot read it"):
        _settings(tmp_path, host="0.0.0.0", read_token_path=tmp_path / "absent")
    token_file = tmp_path / "read_token"
    token_file.write_text("reader-secret\n")
    settings = _settings(tmp_path, host="0.0.0.0", read_token_path=token_file)
    token_file.unlink()  # read once, at start-up: the file is no longer needed
    with api_client(settings, reconcile=False) as c:
        r = c.get("/experiments", headers={"Authorization": "Bearer reader-secret"})
        assert r.status_code == 200, r.text
        assert c.get("/experiments").status_code == 401
    with pytest.raises(ValueError, match="SIBNN_READ_TOKEN_FILE=.*absent: cannot read it"):
        settings.model_copy(update={"read_token_path": tmp_path / "absent"})  # a copy checks its file as a start


# --- 4. the embedded stack's secrets: private from their first byte -----------------------------------------------

@pytest.fixture
def umask_zero():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def modes_before_chmod(monkeypatch):
    """Each chmod's path and the mode it found: a file created wide and narrowed afterwards shows up here."""
    seen, real = [], os.chmod

    def chmod(path, mode, *a, **kw):
        seen.append((str(path), stat.S_IMODE(os.stat(path).st_mode)))
        return real(path, mode, *a, **kw)

    monkeypatch.setattr(os, "chmod", chmod)
    return seen


def test_the_stacks_home_and_secrets_are_created_private_whatever_the_umask(tmp_path, umask_zero,
                                                                              modes_before_chmod):
    from console import stack

    home = tmp_path / "state" / "home"
    stack.make_home(home)
    token = stack._read_or_make_secret(home / "api_token")
    info = stack.StackInfo(api_url="http://127.0.0.1:1", api_token=token, mlflow_url="", ray_dashboard_url="",
                           ray_auth_token_path="", home=str(home), pids={})
    state = info.write(home)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for f in (home / "api_token", state):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    wide = [(p, oct(m)) for p, m in modes_before_chmod if m & 0o077]
    assert not wide, f"created readable by others, narrowed only afterwards: {wide}"
    assert stack._read_or_make_secret(home / "api_token") == token  # made once, then read
    (home / "ray_auth_token").write_text("")  # an empty file left behind is replaced by a private one
    os.chmod(home / "ray_auth_token", 0o644)
    new = stack._read_or_make_secret(home / "ray_auth_token")
    assert len(new) == 64 and stat.S_IMODE((home / "ray_auth_token").stat().st_mode) == 0o600


# --- 6. the bearer scheme on reads --------------------------------------------------------------------------------

def test_every_read_route_declares_the_bearer_scheme_and_the_probes_do_not(tmp_path):
    with api_client(_settings(tmp_path), reconcile=False) as c:
        doc = c.app.openapi()
    gets = {path: ops["get"] for path, ops in doc["paths"].items() if "get" in ops}
    assert {"/experiments", "/experiments/{experiment_id}", "/models", "/tables/rho-ablation"} <= set(gets)
    for path, op in gets.items():
        if path in ("/healthz", "/readyz"):
            assert "security" not in op, path
        else:
            assert op.get("security") == [{"HTTPBearer": []}], path
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


# --- 7. a client that reads a newer server's answers --------------------------------------------------------------

ROW_NUMBERS = ("final_top1", "final_top5", "best_top1", "best_top5", "sparsity", "theta_mean", "delta_mean",
               "wall_time_s", "images_per_s", "packed_bytes", "packed_file_bytes", "packed_latency_ms")


def test_the_client_reads_an_answer_with_fields_it_does_not_know():
    from console.client import Api

    experiment = {"id": "e1", "name": "n", "status": "PENDING", "reason": None, "attempt": 1,
                  "ray_submission_id": "e1-1", "ray_job_status": None, "cancel_requested": False, "n_trials": 2,
                  "created_at": "2026-01-01T00:00:00+00:00", "started_at": None, "finished_at": None,
                  "mlflow_experiment_id": None, "mlflow_url": None,
                  "links": {"self": "/experiments/e1", "results": "/experiments/e1/results",
                            "logs": "/experiments/e1/logs", "artifacts": "/experiments/e1/artifacts"},
                  "priority": "high"}  # fields a newer server added
    results = {"experiment_id": "e1", "status": "SUCCEEDED", "shard": 3,
               "rows": [{**dict.fromkeys(ROW_NUMBERS), "trial_id": "t0", "arch": "mlp_small", "binarizer": "sibnn",
                         "rho": 0.3, "seed": 0, "state": "FINISHED", "epochs": 2, "run_id": "r0",
                         "best_checkpoint": None, "mlflow_url": None, "new_mlflow_column": 1.5}]}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=results if request.url.path.endswith("/results") else experiment)

    api = Api("http://api.test", "t")
    api.http = httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(handler))
    got = api.submit({"name": "n"})
    assert (got["id"], got["status"], got["links"]["logs"]) == ("e1", "PENDING", "/experiments/e1/logs")
    assert "priority" not in got and "artifacts" not in got["links"]  # what this client does not know, it drops
    rows = api.results("e1")["rows"]
    assert rows[0]["new_mlflow_column"] == 1.5  # rows stay open: a new MLflow column still reaches the table
