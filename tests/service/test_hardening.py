"""Issue 16, tried as an attacker and an unlucky operator would: dataset paths outside the data roots (symlinks and
``..`` included), bodies that are huge, unauthenticated or malformed, reads beyond loopback, many concurrent
POSTs against the active-experiment limit (SQLite and PostgreSQL), and an MLflow frozen with SIGSTOP.

The servers are real: uvicorn processes, Ray head, MLflow server, PostgreSQL 15. docs/reliability.md lists each
attack with what the service does and the test here that pins it."""
from __future__ import annotations

import concurrent.futures
import copy
import json
import os
import select
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from jobs.presets import PRESETS
from console import stack
from service import db
from service.experiments import confine_dataset
from service.settings import Settings
from tests.service.conftest import API_TOKEN, AUTH, api_client, dead_address, small_digits, start_live_api

PROBLEM = "application/problem+json"


def cifar_spec(root: str) -> dict:
    spec = copy.deepcopy(PRESETS["digits"])
    spec["dataset"] = {"kind": "cifar10", "root": root}
    spec["grid"]["arch"] = ["vgg_small"]
    return spec


# --- data roots ---------------------------------------------------------------------------------------------------

@pytest.fixture
def rooted(tmp_path, offline_settings):
    """Settings whose only data root is tmp/data (with a cifar folder in it); an outside folder next to it."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    (data / "cifar").mkdir(parents=True)
    outside.mkdir()
    (data / "escape").symlink_to(outside)            # a link inside the root pointing out of it
    (data / "inside-link").symlink_to(data / "cifar")  # a link that stays inside
    return offline_settings.model_copy(update={"data_roots": str(data)}), data, outside


@pytest.mark.parametrize("root", ["/etc", "{data}/../outside", "../../etc", "{data}/escape", "{data}/escape/x",
                                  "escape", "{outside}"])
def test_a_dataset_root_outside_the_data_roots_is_422_naming_dataset_root(rooted, root):
    settings, data, outside = rooted
    root = root.format(data=data, outside=outside)
    with api_client(settings, reconcile=False) as c:
        r = c.post("/experiments", json=cifar_spec(root), headers=AUTH)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    assert [e["field"] for e in r.json()["errors"]] == ["dataset.root"]
    assert "outside the data roots" in r.json()["detail"] and str(data) in r.json()["detail"]


def test_a_synthetic_root_outside_the_data_roots_is_refused_before_anything_is_written(rooted):
    settings, data, outside = rooted
    spec = {**cifar_spec(""), "dataset": {"kind": "synthetic", "root": str(data / "escape" / "made")}}
    spec["grid"]["arch"] = ["resnet18"]
    with api_client(settings, reconcile=False) as c:
        r = c.post("/experiments", json=spec, headers=AUTH)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "dataset.root"
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("root, want", [("cifar", "cifar"), ("{data}/cifar", "cifar"),
                                        ("inside-link", "cifar"), ("{data}/x/../cifar", "cifar")])
def test_a_root_inside_the_data_roots_is_stored_resolved(rooted, root, want):
    settings, data, _ = rooted
    from jobs.spec import parse_spec

    spec = confine_dataset(settings, parse_spec(cifar_spec(root.format(data=data))))
    assert spec.dataset.root == str(data / want)


def test_a_relative_root_never_resolves_against_the_working_directory(rooted, tmp_path, monkeypatch):
    settings, data, _ = rooted
    (tmp_path / "cwd" / "cifar").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "cwd")
    (data / "cifar").rmdir()  # exists only under the working directory now
    with api_client(settings, reconcile=False) as c:
        r = c.post("/experiments", json=cifar_spec("cifar"), headers=AUTH)
    assert r.status_code == 422 and str(data / "cifar") in r.json()["detail"]


def test_the_default_data_root_is_under_sibnn_home(tmp_path):
    assert Settings(home=tmp_path).data_root_paths == [tmp_path.resolve() / "data"]
    s = Settings(home=tmp_path, data_roots=f"/srv/a{os.pathsep}/srv/b")
    assert s.data_root_paths == [Path("/srv/a"), Path("/srv/b")]


def test_the_job_refuses_a_root_outside_its_data_roots_and_a_root_without_the_data(tmp_path, monkeypatch):
    """Defence in depth: the job checks again (the service passes SIBNN_DATA_ROOTS), and fails in one line, at once,
    when the root is a directory without the dataset's files (it used to retry for minutes)."""
    from jobs import run
    from jobs.spec import parse_spec

    data = tmp_path / "data"
    (data / "empty").mkdir(parents=True)
    monkeypatch.setenv("SIBNN_DATA_ROOTS", str(data))
    with pytest.raises(run.InputError, match="outside the data roots"):
        run.prepare_dataset(parse_spec(cifar_spec("/etc")), tmp_path / "runs")
    with pytest.raises(run.InputError, match="dataset.root: .*CIFAR|dataset.root: .*cifar"):
        run.prepare_dataset(parse_spec(cifar_spec(str(data / "empty"))), tmp_path / "runs")


def test_failure_reasons_lose_colour_codes_and_keep_the_end():
    from service.ray_jobs import clean_message

    raw = "\x1b[31mTraceback\x1b[0m\n" + "x" * 30_000 + "\nValueError: \x1b[1mbad root\x1b[0m"
    text = clean_message(raw)
    assert "\x1b" not in text and len(text) == 1000
    assert text.startswith("…") and text.endswith("ValueError: bad root")


# --- strict bodies (in-process) -------------------------------------------------------------------------------------

def _post_raw(c, body: bytes, content_type: str | None = "application/json"):
    headers = dict(AUTH)
    if content_type:
        headers["Content-Type"] = content_type
    return c.post("/experiments", content=body, headers=headers)


def test_invalid_json_names_the_body_with_line_and_column(offline_api):
    r = _post_raw(offline_api, b'{\n  "name": "x",\n  "grid": [1,,2]\n}')
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    assert r.json()["errors"] == [{"field": "body", "message": r.json()["errors"][0]["message"]}]
    assert "line 3 column" in r.json()["detail"]


@pytest.mark.parametrize("body, words", [
    (b'{"name": ' + b"7" * 5000 + b"}", "digits"),
    (b'{"name": ' + b"[" * 1000 + b"]" * 1000 + b"}", "nested deeper"),
    (b'{"name": "\xff"}', "UTF-8"),
])
def test_oversized_numbers_and_deep_nesting_are_422_naming_the_body(offline_api, body, words):
    r = _post_raw(offline_api, body)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "body" and words in r.json()["detail"]


def test_a_body_without_content_type_gets_a_clear_message(offline_api):
    r = _post_raw(offline_api, json.dumps(small_digits()).encode(), content_type=None)
    assert r.status_code == 415 and "Content-Type: application/json" in r.json()["detail"]


@pytest.mark.parametrize("mutate, field", [
    (lambda s: s["recipe"].update(epochs=True), "recipe.epochs"),
    (lambda s: s["grid"].update(seed=["1"]), "grid.seed.0"),
    (lambda s: s["grid"].update(binarizer=["sign"], rho=[0.5]), "grid.rho"),
    (lambda s: s["dataset"].update(kind="synthetic", synthetic_classes=1000, synthetic_per_class=10_000),
     "dataset.synthetic_per_class"),
])
def test_loose_values_are_422_naming_the_field(offline_api, mutate, field):
    spec = small_digits()
    mutate(spec)
    r = offline_api.post("/experiments", json=spec, headers=AUTH)
    assert r.status_code == 422, r.text
    assert field in [e["field"] for e in r.json()["errors"]]


# --- reads beyond loopback ----------------------------------------------------------------------------------------

def test_reads_need_a_token_when_the_api_listens_beyond_loopback(tmp_path, offline_settings):
    read_token = tmp_path / "read_token"
    read_token.write_text("reader-secret\n")
    closed = offline_settings.model_copy(update={"host": "0.0.0.0", "read_token_path": read_token})
    with api_client(closed, reconcile=False) as c:
        assert c.get("/experiments").status_code == 401
        assert c.get("/experiments", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/experiments", headers={"Authorization": "Bearer reader-secret"}).status_code == 200
        assert c.get("/experiments", headers=AUTH).status_code == 200
        assert c.get("/tables/rho-ablation").status_code == 401
        # the read token cannot write
        r = c.post("/experiments", json=small_digits(), headers={"Authorization": "Bearer reader-secret"})
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert c.get("/healthz").status_code == 200
    opened = closed.model_copy(update={"open_reads": True})
    with api_client(opened, reconcile=False) as c:
        assert c.get("/experiments").status_code == 200


def test_reads_on_loopback_are_open_unless_closed_explicitly(offline_settings):
    assert offline_settings.reads_open
    with api_client(offline_settings.model_copy(update={"open_reads": False}), reconcile=False) as c:
        assert c.get("/experiments").status_code == 401


@pytest.mark.parametrize("server, open_reads, want", [(("127.0.0.1", 8000), None, 200), (("10.1.2.3", 8000), None, 401),
                                                      (("10.1.2.3", 8000), True, 200), (("::1", 8000), False, 401)])
def test_a_request_that_arrived_on_a_network_address_needs_a_token_to_read(server, open_reads, want):
    """`uvicorn --host 0.0.0.0` without SIBNN_HOST: the connection's own address closes reads to the network."""
    import asyncio

    from service.guard import RequestGuard

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    guard = RequestGuard(app, Settings(api_token=API_TOKEN, open_reads=open_reads))
    scope = {"type": "http", "method": "GET", "path": "/experiments", "headers": [], "server": server,
             "query_string": b""}
    asyncio.run(guard(scope, receive, send))
    assert sent[0]["status"] == want


# --- bodies against a real server ---------------------------------------------------------------------------------

def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _send_until_answered(port: int, head: bytes, chunk: bytes, max_bytes: int, chunked: bool) -> tuple[bytes, int]:
    """Send ``head`` then body chunks until the server answers; return (first bytes of the answer, body sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head)
        s.setblocking(False)
        payload = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") if chunked else chunk
        while sent < max_bytes:
            readable, writable, _ = select.select([s], [s], [], 30)
            if readable:
                break
            if writable:
                try:
                    sent += s.send(payload)
                except (BrokenPipeError, ConnectionResetError):
                    break
        s.setblocking(True)
        answer = b""
        try:
            while not answer.rstrip().endswith(b"}") and (more := s.recv(4096)):
                answer += more
        except (ConnectionResetError, TimeoutError):
            pass
    return answer, sent


@pytest.mark.slow
def test_a_huge_body_gets_401_or_413_before_it_is_read_and_memory_stays_flat(tmp_path):
    port = stack.free_port()
    env = stack.api_env(home=tmp_path / "home", ray_address=dead_address(), mlflow_url=dead_address(),
                        api_token=API_TOKEN, database_url=f"sqlite:///{tmp_path / 'api.db'}")
    api = stack.start_api(env, port, log_path=tmp_path / "api.log")
    try:
        big = 200 * 1024 * 1024
        rss_before = _rss_kib(api.pid)
        head = (f"POST /experiments HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {big}\r\n\r\n").encode()
        answer, sent = _send_until_answered(port, head, b" " * 65536, big, chunked=False)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert sent < big // 4  # answered long before the client finished sending

        authed = head.replace(b"\r\n\r\n", f"\r\nAuthorization: Bearer {API_TOKEN}\r\n\r\n".encode())
        answer, sent = _send_until_answered(port, authed, b" " * 65536, big, chunked=False)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]

        # no Content-Length to trust: chunked, 64 KiB at a time, up to 200 MB; the server stops at 1 MiB
        chunked = (f"POST /experiments HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   f"Authorization: Bearer {API_TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
        answer, sent = _send_until_answered(port, chunked, b" " * 65536, big, chunked=True)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"SIBNN_MAX_BODY_BYTES" in answer
        assert sent < big // 4
        assert _rss_kib(api.pid) - rss_before < 64 * 1024, "the API's memory grew by more than 64 MiB"
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    finally:
        api.stop(timeout=10)


# --- the active-experiment limit under concurrency ----------------------------------------------------------------

def test_the_creation_lock_serialises_count_and_insert(db_url):
    """The database half of the limit, on SQLite and PostgreSQL: 20 threads count-then-insert under the lock with a
    pause in between (where the race was), limit 8; exactly 8 rows result."""
    from sqlalchemy import func, select

    db.migrate(db_url)
    engine = db.make_engine(db_url)
    sessions = db.session_factory(engine)
    outcomes = []

    def create(i: int) -> None:
        with sessions() as s:
            db.lock_experiment_creation(s)
            active = s.scalar(select(func.count()).select_from(db.ExperimentRow)
                              .where(db.ExperimentRow.status.in_(db.ACTIVE)))
            time.sleep(0.02)
            if active >= 8:
                outcomes.append(429)
                return
            s.add(db.ExperimentRow(id=f"e{i}", name="n", spec_json="{}", spec_fingerprint="f", n_trials=1,
                                   status=db.PENDING, attempt=1, cancel_requested=False))
            s.commit()
            outcomes.append(202)

    try:
        threads = [threading.Thread(target=create, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        with sessions() as s:
            assert s.scalar(select(func.count()).select_from(db.ExperimentRow)) == 8
        assert sorted(outcomes) == [202] * 8 + [429] * 12
    finally:
        engine.dispose()


@pytest.mark.slow
def test_concurrent_posts_never_exceed_the_active_limit(servers, tmp_path, db_url):
    """20 distinct POSTs at once, limit 8: exactly 8 created (Ray jobs that sleep, so they stay active), 12 × 429."""
    hang = tmp_path / "hang"
    hang.write_text("#!/bin/sh\nexec sleep 300\n")
    hang.chmod(0o755)
    api = start_live_api(servers, tmp_path, database_url=db_url, job_python=str(hang), max_active_experiments=8)
    created = []
    try:
        def post(i: int) -> httpx.Response:
            return httpx.post(f"{api.url}/experiments", json=small_digits(f"race {i}"), headers=AUTH, timeout=120)

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(post, range(20)))
        codes = sorted(r.status_code for r in answers)
        created = [r.json()["id"] for r in answers if r.status_code == 202]
        assert codes == [202] * 8 + [429] * 12, [(r.status_code, r.text[:200]) for r in answers]
        listed = httpx.get(f"{api.url}/experiments", params={"limit": 100}, timeout=30).json()
        assert sum(e["status"] in ("PENDING", "RUNNING") for e in listed["items"]) == 8
        # a cancel of a submitted job: CANCELLED at once, and ray_job_status follows Ray to STOPPED (it used to
        # stay RUNNING). The API only accepts; the reconciler submits: wait until Ray has the job.
        deadline = time.monotonic() + 60
        while httpx.get(f"{api.url}/experiments/{created[0]}", timeout=30).json()["ray_job_status"] is None:
            assert time.monotonic() < deadline, "not submitted to Ray within 60 s"
            time.sleep(0.5)
        r = httpx.delete(f"{api.url}/experiments/{created[0]}", headers=AUTH, timeout=60)
        assert r.status_code == 202 and r.json()["status"] == "CANCELLED"
        deadline = time.monotonic() + 60
        while (seen := httpx.get(f"{api.url}/experiments/{created[0]}", timeout=30).json())["ray_job_status"] \
                != "STOPPED":
            assert time.monotonic() < deadline, f"ray_job_status still {seen['ray_job_status']} after the cancel"
            time.sleep(1)
    finally:
        for exp_id in created:
            httpx.delete(f"{api.url}/experiments/{exp_id}", headers=AUTH, timeout=60)
        api.stop()


# --- a frozen MLflow ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_frozen_mlflow_costs_mlflow_reads_only_and_says_timeout(tmp_path):
    ml = stack.start_mlflow(tmp_path / "mlflow")
    port = stack.free_port()
    url = f"sqlite:///{tmp_path / 'api.db'}"
    env = stack.api_env(home=tmp_path / "home", ray_address=dead_address(), mlflow_url=ml.url, api_token=API_TOKEN,
                        database_url=url, mlflow_timeout_s=3, mlflow_max_calls=2)
    api = stack.start_api(env, port, log_path=tmp_path / "api.log")
    base = f"http://127.0.0.1:{port}"
    frozen = False
    try:
        engine = db.make_engine(url)
        with db.session_factory(engine)() as s:
            spec = json.dumps(small_digits())
            s.add(db.ExperimentRow(id="frozen1", name="f", spec_json=spec, spec_fingerprint="x", n_trials=2,
                                   status=db.RUNNING, attempt=1, cancel_requested=False))
            s.commit()
        engine.dispose()
        assert httpx.get(f"{base}/experiments/frozen1/results", timeout=30).status_code == 200

        os.killpg(ml.server.pid, signal.SIGSTOP)
        frozen = True
        answers: dict[int, httpx.Response] = {}

        def results(i: int):
            answers[i] = httpx.get(f"{base}/experiments/frozen1/results", timeout=60)

        threads = [threading.Thread(target=results, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while not any("already waiting" in r.text for r in list(answers.values())):
            assert time.monotonic() < deadline, "no MLflow call was refused for a full pool"
            time.sleep(0.05)
        # The pool is full of calls hanging on MLflow; the database-only endpoints still answer, before those end.
        listing = httpx.get(f"{base}/experiments", timeout=60)
        hanging = sum(t.is_alive() for t in threads)
        assert listing.status_code == 200 and listing.json()["total"] == 1
        assert httpx.get(f"{base}/experiments/frozen1/logs", timeout=60).status_code == 503  # Ray is down
        assert hanging >= 1, "every MLflow call had already ended: the check proved nothing"
        for t in threads:
            t.join(60)
        details = [r.json()["detail"] for r in answers.values()]
        assert all(r.status_code == 503 for r in answers.values())
        timeouts = [d for d in details if "within 3 s (timeout" in d]
        assert timeouts and all("refused" not in d for d in details), details
        assert all("(timeout" in d or "already waiting" in d for d in details), details
    finally:
        if frozen:
            os.killpg(ml.server.pid, signal.SIGCONT)
        api.stop(timeout=10)
        ml.stop()
