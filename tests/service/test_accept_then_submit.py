"""Accept, then submit: ``POST /experiments`` needs only the database; the reconciler submits, step by step.

The load test runs the API as a process on PostgreSQL with MLflow frozen (SIGSTOP: it accepts connections and never
answers) and no Ray at its address. 100 concurrent POSTs over 10 idempotency keys must give exactly 10 experiments,
no 5xx, and every answer before one MLflow call could time out (15 s): a POST that waited on the frozen MLflow
would take at least that long, so nothing on the request path waits for MLflow. The latency target itself (p99 under a second on 2 cores) is measured by ``bench/post_burst.py``, the same
burst, not asserted by a timed test (docs/benchmarks.md). Then MLflow comes back (the MLflow step is recorded, Ray still refuses), the API
restarts (no step lost or repeated: one MLflow parent run per experiment), Ray comes up at its address, and all
10 experiments run to SUCCEEDED, each in one attempt.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import time
import uuid

import httpx
import pytest

from bench.post_burst import post_burst, tiny
from console import stack
from jobs import tracking
from tests.service.conftest import API_TOKEN, TERMINAL

N_KEYS, PER_KEY = 10, 10
# One MLflow request's timeout: a POST that waited on the frozen MLflow would take at least this long. Far above
# the burst's own time (CI's loaded 2-core box: median 2.3 s, slowest 2.8 s), so the check below is not a timing one.
MLFLOW_TIMEOUT_S = 15
RAY_PORTS = ("gcs", "dashboard", "client_server", "agent_listen", "agent_grpc", "metrics_export", "runtime_env",
             "node_manager", "object_manager")


def _signal_group(server: stack.Server, sig: int) -> None:
    os.killpg(server.pid, sig)


def _experiments(url: str) -> list[dict]:
    r = httpx.get(f"{url}/experiments", params={"limit": 100}, timeout=30)
    r.raise_for_status()
    return r.json()["items"]


def _wait(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout:.0f} s")
        time.sleep(poll)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the wait for the ten experiments below may take 12 min on a loaded box
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # the conftest's fresh PostgreSQL database
def test_posts_with_mlflow_frozen_and_ray_down_are_accepted_fast_and_all_run_once_both_return(tmp_path, db_url):
    ml = stack.start_mlflow(tmp_path / "mlflow")
    ray_ports = dict(zip(RAY_PORTS, stack.free_ports(len(RAY_PORTS))))
    ray_token = uuid.uuid4().hex
    ray_url = f"http://127.0.0.1:{ray_ports['dashboard']}"
    port = stack.free_port()
    env = stack.api_env(home=tmp_path / "home", ray_address=ray_url, ray_token=ray_token, mlflow_url=ml.url,
                        api_token=API_TOKEN, database_url=db_url, storage_path=tmp_path / "runs",
                        reconcile_interval_s=1, mlflow_timeout_s=MLFLOW_TIMEOUT_S,
                        max_active_experiments=N_KEYS)
    api = stack.start_api(env, port, log_path=tmp_path / "api.log")
    url = f"http://127.0.0.1:{port}"
    ray = None
    frozen = False
    try:
        _signal_group(ml.server, signal.SIGSTOP)
        frozen = True

        # --- 100 concurrent POSTs over 10 keys ---------------------------------------------------------------
        bodies = {f"key-{i}": tiny(i) for i in range(N_KEYS)}
        order = [k for k in bodies for _ in range(PER_KEY)]
        answers = asyncio.run(post_burst(f"{url}/experiments", bodies, order, API_TOKEN))
        codes = [code for _, code, _, _ in answers]
        latencies = sorted(s for _, _, s, _ in answers)
        p99 = latencies[int(0.99 * len(latencies)) - 1]
        print(f"100 POSTs: codes {sorted(set(codes))}, median {statistics.median(latencies) * 1000:.0f} ms, "
              f"p99 {p99 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms")
        assert not [a for a in answers if a[1] >= 500], [a[1:] for a in answers if a[1] >= 500]
        assert set(codes) == {202}, [(code, body) for _, code, _, body in answers if code != 202]
        ids = {key: {body["id"] for k, _, _, body in answers if k == key} for key in bodies}
        assert all(len(v) == 1 for v in ids.values()), ids  # each key: one experiment, replayed to the others
        assert latencies[-1] < MLFLOW_TIMEOUT_S, f"slowest POST {latencies[-1]:.3f} s: did it wait on MLflow?"
        listed = _experiments(url)
        assert len(listed) == N_KEYS and {e["id"] for e in listed} == {next(iter(v)) for v in ids.values()}
        assert all(e["status"] == "PENDING" for e in listed)

        # --- the reconciler says why nothing is submitted: MLflow first --------------------------------------
        waiting = _wait(lambda: [e for e in _experiments(url) if (e.get("reason") or "").startswith(
            "not submitted yet: ")], 150, "a reason naming the frozen MLflow")
        assert ml.url in waiting[0]["reason"], waiting[0]["reason"]
        reads = [httpx.get(f"{url}/experiments", timeout=30) for _ in range(5)]  # DB-only reads stay up
        assert all(r.status_code == 200 for r in reads)

        # --- MLflow back, Ray still down: the MLflow step is done and recorded; the reason names Ray ----------
        _signal_group(ml.server, signal.SIGCONT)
        frozen = False
        _wait(lambda: all(e["mlflow_experiment_id"] for e in _experiments(url)), 120,
              "every experiment's MLflow step")
        ray_waiting = _wait(lambda: [e for e in _experiments(url) if ray_url in (e.get("reason") or "")], 60,
                            "a reason naming the Ray address")
        assert ray_waiting[0]["status"] == "PENDING"

        # --- the API restarts in between: nothing is lost or repeated ----------------------------------------
        api.stop()
        api = stack.start_api(env, port, log_path=tmp_path / "api-2.log")
        assert len(_experiments(url)) == N_KEYS

        # --- Ray comes up at the address the API was given: all 10 run ---------------------------------------
        ray = stack.start_ray_head(tmp_path / "ray", token=ray_token, num_cpus=2, ports=ray_ports)
        done = _wait(lambda: (items := _experiments(url)) and all(e["status"] in TERMINAL for e in items) and items,
                     # ten Ray jobs on 2 cores: ~5 min alone; a fresh clone's full run went past 7 on a loaded box
                     720, "all 10 experiments ending", poll=2)
        assert [e["status"] for e in done] == ["SUCCEEDED"] * N_KEYS, [(e["id"], e["status"], e["reason"])
                                                                       for e in done]
        assert all(e["attempt"] == 1 and e["reason"] is None for e in done), [(e["attempt"], e["reason"])
                                                                               for e in done]
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=ml.url)
        for e in done:
            parents = client.search_runs([e["mlflow_experiment_id"]],
                                         filter_string=f"tags.`{tracking.TAG_ROLE}` = 'parent'")
            assert len(parents) == 1, (e["id"], [p.info.run_id for p in parents])
        log = (tmp_path / "api.log").read_text() + (tmp_path / "api-2.log").read_text()
        assert "Traceback" not in log, log[-3000:]
        print(json.dumps({"p99_ms": round(p99 * 1000), "median_ms": round(statistics.median(latencies) * 1000)}))
    finally:
        if frozen:
            _signal_group(ml.server, signal.SIGCONT)
        api.stop()
        if ray is not None:
            stack.stop_ray_head(ray)
        ml.stop()
