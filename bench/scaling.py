"""Throughput of one trial with 1 vs 2 Ray Train workers (DDP): training images/s per epoch and wall time.

    python bench/scaling.py                       # CPU: digits_cnn on the embedded digits, gloo
    python bench/scaling.py --arch resnet18 --dataset synthetic --image-size 64 --epochs 3

Each configuration is one single-trial sweep through ``jobs.sweep.run_sweep`` on a local Ray, recorded in a
throwaway MLflow (SQLite file). images/s is the global training throughput (all ranks) of the fastest epoch after
the first; wall time covers the whole trial, worker start-up included. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs import tracking  # noqa: E402
from jobs.spec import parse_spec  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits", choices=["digits", "synthetic"])
    p.add_argument("--arch", default="digits_cnn")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64, help="global batch")
    p.add_argument("--configs", default="1x1,2x1", help="workers x CPUs per worker, comma separated")
    args = p.parse_args()

    import ray

    from jobs.sweep import run_sweep

    work = Path(tempfile.mkdtemp(prefix="sibnn-scaling-"))
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    os.environ.pop("RAY_ADDRESS", None)
    # One logical CPU more than the machine has: the Tune driver of the trial reserves 0.01 CPU and sleeps, and
    # the 2×1 configuration must fit beside it on a 2-core box.
    ray.init(num_cpus=os.cpu_count() + 1, _temp_dir=ray_tmp, include_dashboard=False, log_to_driver=False)
    mlflow_uri = f"sqlite:///{work / 'mlflow.db'}"
    dataset = {"kind": "digits"}
    if args.dataset == "synthetic":
        dataset = {"kind": "synthetic", "policy": "rrc", "image_size": args.image_size, "synthetic_classes": 8,
                   "synthetic_per_class": 64}
    rows = []
    for cfg in args.configs.split(","):
        workers, cpus = (float(v) for v in cfg.split("x"))
        spec = parse_spec({"name": "scaling", "dataset": dataset,
                           "grid": {"arch": [args.arch], "binarizer": ["sibnn"], "rho": [0.3], "seed": [0]},
                           "recipe": {"epochs": args.epochs, "batch_size": args.batch_size},
                           "resources": {"workers_per_trial": int(workers), "cpus_per_worker": cpus}})
        exp_id = f"scale-{int(workers)}x{cpus:g}".replace(".", "_")
        data_root = None
        if args.dataset == "synthetic":
            from jobs.run import prepare_dataset

            data_root = prepare_dataset(spec, work)
        start = time.perf_counter()
        out = run_sweep(spec, exp_id, storage_path=str(work / "store"), mlflow_uri=mlflow_uri,
                        data_root=data_root, data_fingerprint="bench")
        wall = time.perf_counter() - start
        c = tracking.client(mlflow_uri)
        (run,) = tracking.trial_runs(c, exp_id)
        ips = [m.value for m in c.get_metric_history(run.info.run_id, "images_per_s") if m.step > 1]
        rows.append((int(workers), cpus, max(ips), wall, out.rows[0]["final_top1"]))
    ray.shutdown()
    base = rows[0][2]
    print(f"{args.arch} on {args.dataset}, global batch {args.batch_size}, {args.epochs} epochs, "
          f"{os.cpu_count()} CPUs, gloo")
    print("| workers | CPUs/worker | train images/s | × first row | trial wall time (s) | final top-1 |")
    print("|---:|---:|---:|---:|---:|---:|")
    for w, cpus, ips, wall, top1 in rows:
        print(f"| {w} | {cpus:g} | {ips:.0f} | {ips / base:.2f} | {wall:.1f} | {top1:.1f} |")


if __name__ == "__main__":
    main()
