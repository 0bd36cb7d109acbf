"""Request latency of the control plane under concurrent load: ``GET /experiments/{id}`` and ``POST /experiments``.

    python bench/api.py                       # starts its own embedded stack (Ray head, MLflow, API) in a temp dir
    python bench/api.py --api-url http://127.0.0.1:8000 --token $(cat ~/.sibnn/api_token)   # an existing API

Rows:
- ``GET /experiments/{id}``: the database row plus the per-trial state from MLflow (two MLflow calls).
- ``POST /experiments``: the create path — validate, store PENDING (since issue 23 the reconciler then makes the
  MLflow parent run and submits the Ray job, off the request path) — with a fresh Idempotency-Key each time. Every
  experiment is cancelled as soon as it is created (each would otherwise start a Ray job driver), so fewer of these
  are sent.
- ``POST /experiments (replay)``: the same key and body again: the idempotent answer, no MLflow or Ray call.

Prints a markdown table (p50/p99/mean in ms, requests/s) for docs/benchmarks.md. A benchmark, not a test: it
asserts nothing about time.
"""
from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.presets import preset  # noqa: E402


def spec(name: str) -> dict:
    return {**preset("digits", grid={"binarizer": ["sibnn", "fp"], "rho": [0.3], "seed": [0]},
                     recipe={"epochs": 1}).model_dump(mode="json"), "name": name}


def run_load(fn, n: int, concurrency: int) -> tuple[list[float], float, list[int]]:
    """Call ``fn(i)`` n times from ``concurrency`` threads; latencies in ms, wall seconds, status codes."""
    lat, codes, lock = [], [], threading.Lock()

    def one(i):
        t = time.perf_counter()
        code = fn(i)
        ms = 1000 * (time.perf_counter() - t)
        with lock:
            lat.append(ms)
            codes.append(code)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(n)))
    return lat, time.perf_counter() - t0, codes


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--api-url")
    p.add_argument("--token")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--gets", type=int, default=400)
    p.add_argument("--posts", type=int, default=24, help="real submissions (each starts and cancels a Ray job)")
    p.add_argument("--post-concurrency", type=int, default=4)
    p.add_argument("--replays", type=int, default=200)
    args = p.parse_args(argv)

    stack = None
    if args.api_url:
        url, token = args.api_url.rstrip("/"), args.token
    else:
        from console.stack import Stack, free_port

        home = Path(tempfile.mkdtemp(prefix="sibnn-bench-"))
        stack = Stack(home, api_port=free_port(), say=lambda m: print(m, file=sys.stderr))
        info = stack.start()
        url, token = info.api_url, info.api_token
    auth = {"Authorization": f"Bearer {token}"}
    local = threading.local()

    def client() -> httpx.Client:
        if not hasattr(local, "c"):
            local.c = httpx.Client(base_url=url, headers=auth, timeout=120)
        return local.c

    try:
        first = client().post("/experiments", json=spec("bench target"),
                              headers={"Idempotency-Key": "bench-target-" + uuid.uuid4().hex})
        first.raise_for_status()
        exp_id = first.json()["id"]
        client().delete(f"/experiments/{exp_id}")
        key = first.request.headers["Idempotency-Key"]
        client().get(f"/experiments/{exp_id}")  # warm-up

        rows = []
        lat, wall, codes = run_load(lambda i: client().get(f"/experiments/{exp_id}").status_code, args.gets,
                                    args.concurrency)
        rows.append(("GET /experiments/{id}", args.concurrency, lat, wall, codes))

        def post_timed(i):
            t = time.perf_counter()
            r = client().post("/experiments", json=spec(f"bench {i}"), headers={"Idempotency-Key": uuid.uuid4().hex})
            ms = 1000 * (time.perf_counter() - t)
            if r.status_code == 202:
                client().delete(f"/experiments/{r.json()['id']}")
            return ms, r.status_code

        post_lat, post_codes = [], []
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.post_concurrency) as pool:
            for ms, code in pool.map(post_timed, range(args.posts)):
                post_lat.append(ms)
                post_codes.append(code)
        rows.append(("POST /experiments (create + submit)", args.post_concurrency, post_lat,
                     time.perf_counter() - t0, post_codes))

        body = first.request.content
        lat, wall, codes = run_load(
            lambda i: client().post("/experiments", content=body,
                                    headers={"Idempotency-Key": key, "Content-Type": "application/json"}).status_code,
            args.replays, args.concurrency)
        rows.append(("POST /experiments (idempotent replay)", args.concurrency, lat, wall, codes))
    finally:
        if stack is not None:
            stack.stop()
            shutil.rmtree(stack.home, ignore_errors=True)

    print(f"\nmachine: {platform.node()} · {platform.processor() or platform.machine()} · "
          f"{__import__('os').cpu_count()} CPUs · Python {platform.python_version()} · "
          f"{time.strftime('%Y-%m-%d')}\n")
    print("| request | concurrency | n | p50 ms | p99 ms | mean ms | req/s | status codes |")
    print("|---|---|---|---|---|---|---|---|")
    for name, conc, lat, wall, codes in rows:
        counts = ", ".join(f"{c}×{codes.count(c)}" for c in sorted(set(codes)))
        print(f"| {name} | {conc} | {len(lat)} | {pct(lat, 50):.1f} | {pct(lat, 99):.1f} | "
              f"{statistics.fmean(lat):.1f} | {len(lat) / wall:.1f} | {counts} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
