"""A burst of ``POST /experiments`` while MLflow is frozen and Ray is down: the latency of accept-then-submit.

    python bench/post_burst.py                 # 3 bursts of 100 POSTs over 10 keys, PostgreSQL 15, one API process
    python bench/post_burst.py --sqlite --bursts 5

Starts a private PostgreSQL (``tests/postgres.py``; or SQLite), an MLflow server it freezes with SIGSTOP, and the
API as a uvicorn process whose Ray address has nothing behind it. Each burst sends every POST at once from one
event loop (a fresh database each burst) and prints p50 / p99 / max in ms; the target is p99 under a second on 2
cores (issue 23). ``tests/service/test_accept_then_submit.py`` runs the same burst and checks what it must give
(10 experiments, no 5xx, nothing waiting on MLflow); this measures. A benchmark, not a test: it asserts nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.postgres: run as a script from anywhere

from console import stack  # noqa: E402
from jobs.presets import preset  # noqa: E402

TOKEN = "bench-api-token"


def tiny(i: int) -> dict:
    """One trial, one epoch of the embedded digits (never run here: Ray is down)."""
    spec = preset("digits", grid={"binarizer": ["sibnn"], "rho": [0.3], "seed": [0]},
                  recipe={"epochs": 1}).model_dump(mode="json")
    return {**spec, "name": f"load {i}"}


async def post_burst(url: str, bodies: dict, order: list[str], token: str) -> list[tuple[str, int, float, dict]]:
    """Every POST of ``order`` (keys of ``bodies``) in flight at once from one event loop (a load generator lighter
    than one thread per request: on 2 cores the client's CPU is the server's). Per POST: key, status, seconds from
    its send to its answer, body."""
    limits = httpx.Limits(max_connections=len(order), max_keepalive_connections=len(order))
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:
        async def post(key: str):
            t0 = time.perf_counter()
            r = await c.post(url, json=bodies[key], headers={**auth, "Idempotency-Key": key})
            return key, r.status_code, time.perf_counter() - t0, r.json()

        return await asyncio.gather(*(post(k) for k in order))


def _dead_address() -> str:
    return f"http://127.0.0.1:{stack.free_port()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bursts", type=int, default=3)
    ap.add_argument("--keys", type=int, default=10)
    ap.add_argument("--per-key", type=int, default=10)
    ap.add_argument("--sqlite", action="store_true", help="SQLite instead of a private PostgreSQL")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sibnn-burst-"))
    pg = None
    if not args.sqlite:
        from tests.postgres import start_postgres

        pg = start_postgres()
    ml = stack.start_mlflow(work / "mlflow")
    rows = []
    try:
        os.killpg(ml.server.pid, signal.SIGSTOP)
        for b in range(args.bursts):
            if pg is not None:
                import psycopg

                name = f"b_{uuid.uuid4().hex[:10]}"
                with psycopg.connect(f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres",
                                     autocommit=True) as c:
                    c.execute(f"CREATE DATABASE {name}")
                db_url = f"postgresql://postgres@127.0.0.1:{pg.port}/{name}"
            else:
                db_url = f"sqlite:///{work / f'burst-{b}.db'}"
            port = stack.free_port()
            env = stack.api_env(home=work / "home", ray_address=_dead_address(), ray_token="x", mlflow_url=ml.url,
                                api_token=TOKEN, database_url=db_url, storage_path=work / "runs",
                                reconcile_interval_s=1, max_active_experiments=args.keys)
            api = stack.start_api(env, port, log_path=work / f"api-{b}.log")
            try:
                bodies = {f"key-{i}": tiny(i) for i in range(args.keys)}
                order = [k for k in bodies for _ in range(args.per_key)]
                answers = asyncio.run(post_burst(f"http://127.0.0.1:{port}/experiments", bodies, order, TOKEN))
            finally:
                api.stop()
            lat = sorted(a[2] for a in answers)
            codes = sorted({a[1] for a in answers})
            p99 = lat[max(0, int(0.99 * len(lat)) - 1)]
            rows.append((b + 1, codes, statistics.median(lat) * 1000, p99 * 1000, lat[-1] * 1000))
            print(f"burst {b + 1}: codes {codes}, p50 {rows[-1][2]:.0f} ms, p99 {rows[-1][3]:.0f} ms, "
                  f"max {rows[-1][4]:.0f} ms", flush=True)
    finally:
        os.killpg(ml.server.pid, signal.SIGCONT)
        ml.stop()
        if pg is not None:
            pg.stop()

    db = "SQLite" if args.sqlite else "PostgreSQL 15"
    print(f"\n{len(order)} concurrent POST /experiments over {args.keys} keys, MLflow frozen, Ray down, {db}, one "
          f"uvicorn process; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| burst | answers | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|")
    for n, codes, p50, p99, mx in rows:
        print(f"| {n} | {'/'.join(map(str, codes))} | {p50:.0f} | {p99:.0f} | {mx:.0f} |")


if __name__ == "__main__":
    main()
