"""How many seeds resolve the paper's claims on an embedded dataset: effect sizes and seed spread, measured.

Trains each candidate setup (dataset, train subset, model, epochs) at Si-BNN ρ ∈ {0, 0.3, 1} and sign-BNN over
seeds, exactly as a demo trial trains (``sibnn.trial.build_trial``: the same recipe, the aaai steps at 40 % / 80 %,
batch 100, one torch thread per run — what ``jobs.train_loop.trial_threads`` pins a 0.35-CPU trial to), two runs at
a time on a 2-core machine, and reports per setup:

- the mean final top-1 per configuration and the paired differences Si-BNN ρ 0.3 − sign, ρ 0.3 − ρ 0, ρ 0.3 − ρ 1
  with their 95 % paired-t intervals (``jobs.results.compare``, what the demo's verdicts use);
- for each difference, the seeds k whose expected 95 % half-width t(k−1)·sd/√k is at most half the measured
  difference (the selection rule of docs/demo.md), and the CPU seconds a demo of 5 configurations × k seeds
  would spend training (from the measured per-run time);
- the wall seconds per run.

    python bench/power.py --out /tmp/power.json                   # the default candidates, seeds 0-5
    python bench/power.py --setups mnist5k:0:10,fashion_mnist:10000:5 --seeds 0,1,2,3,4,5

A setup is ``dataset:train_size:epochs`` (train_size 0 = the whole train set); the test set is always whole.
The JSON holds every run (setup, config, seed, final top-1, sparsity, seconds) so the tables can be recomputed.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.results import compare, t_quantile  # noqa: E402

CONFIGS = {"sibnn0.3": ("sibnn", 0.3), "sibnn0": ("sibnn", 0.0), "sibnn1": ("sibnn", 1.0), "sign": ("sign", 0.3),
           "fp": ("fp", 0.3)}
DEFAULT_SETUPS = "mnist5k:0:10,fashion_mnist:10000:5,fashion_mnist:10000:10"
DIFFS = (("sibnn0.3", "sign", "Si-BNN ρ0.3 − sign"), ("sibnn0.3", "sibnn0", "ρ0.3 − ρ0"),
         ("sibnn0.3", "sibnn1", "ρ0.3 − ρ1"))


def _run(job: tuple) -> dict:
    setup, config, seed, arch = job
    import torch

    torch.set_num_threads(1)
    from sibnn.trial import TrialConfig, build_trial

    dataset, train_size, epochs = setup.split(":")
    binarizer, rho = CONFIGS[config]
    subset = {"train_size": int(train_size)} if int(train_size) else {}
    cfg = TrialConfig(dataset=dataset, arch=arch, binarizer=binarizer, rho=rho, epochs=int(epochs),
                      batch_size=100, seed=seed, **subset)
    t0 = time.perf_counter()
    trial = build_trial(cfg, device=torch.device("cpu"))
    state = trial.fit()
    last = state.history[-1]
    return {"setup": setup, "config": config, "seed": seed, "top1": last["val_top1"],
            "sparsity": last.get("sparsity_mean"), "seconds": time.perf_counter() - t0}


def seeds_for(sd: float, d: float, limit: int = 50) -> int | None:
    """The smallest k ≥ 2 whose expected 95 % paired half-width t(k−1)·sd/√k is at most |d|/2."""
    for k in range(2, limit + 1):
        if t_quantile(k - 1) * sd / math.sqrt(k) <= abs(d) / 2:
            return k
    return None


def report(runs: list[dict], n_configs_in_demo: int = 5) -> str:
    lines = []
    setups = list(dict.fromkeys(r["setup"] for r in runs))
    for setup in setups:
        rs = [r for r in runs if r["setup"] == setup]
        by = {c: {r["seed"]: r["top1"] for r in rs if r["config"] == c} for c in CONFIGS}
        secs = statistics.fmean(r["seconds"] for r in rs)
        lines.append(f"\n### {setup}  (mean {secs:.1f} s per run, 1 thread)\n")
        lines.append("| config | seeds | top-1 mean ± sd | sparsity |")
        lines.append("|---|---:|---:|---:|")
        for c, vals in by.items():
            if vals:
                v = list(vals.values())
                sp = [r["sparsity"] for r in rs if r["config"] == c and r["sparsity"] is not None]
                lines.append(f"| {c} | {len(v)} | {statistics.fmean(v):.2f} ± "
                             f"{statistics.stdev(v) if len(v) > 1 else 0:.2f} | "
                             f"{statistics.fmean(sp) if sp else float('nan'):.3f} |")
        lines.append("")
        lines.append("| difference | mean | 95 % interval (paired t) | sd of differences | seeds for half-width ≤ "
                     "d/2 | demo training CPU-s at that k |")
        lines.append("|---|---:|---:|---:|---:|---:|")
        for a, b, label in DIFFS:
            if len(by[a]) >= 2 and set(by[a]) == set(by[b]):
                d = compare(by[a], by[b])
                sd = statistics.stdev([by[a][s] - by[b][s] for s in by[a]])
                k = seeds_for(sd, d.mean)
                cost = f"{k * n_configs_in_demo * secs:.0f}" if k else "–"
                lines.append(f"| {label} | {d.mean:+.2f} | [{d.low:+.2f}, {d.high:+.2f}] | {sd:.2f} | "
                             f"{k if k else '> 50'} | {cost} |")
    return "\n".join(lines)


def choose(runs: list[dict], *, budget_s: float, margin: float, fixed_s: float, cpu_rate: float,
           overhead_cpu_s: float, n_configs: int = 5) -> str:
    """The selection rule of docs/demo.md, applied to the measurements:

    1. per setup, the seeds k a demo of ``n_configs`` × k trials affords within ``margin`` × ``budget_s``: a trial
       costs its fastest measured run (the least-disturbed one) + ``overhead_cpu_s`` (MLflow logging, checkpoints,
       the packed export); the stack's fixed ``fixed_s`` is spent first and trials then run at ``cpu_rate`` CPU-s
       per second — the last three measured by ``python bench/demo.py`` on the shipped demo;
    2. per comparison, the expected 95 % half-width at that k over the measured |d| (below 1: the interval is
       expected to exclude 0 at the measured effect, whichever way it points);
    3. the setup with the most comparisons below 1 wins; a tie goes to the smaller ratio of Si-BNN − sign, the
       headline claim. The example rule of issue 21 (half-width ≤ |d|/2 for Si-BNN − sign) is reported too."""
    lines = ["\n### The rule\n", "| setup | trial CPU-s | affordable seeds k | Si-BNN − sign | ρ0.3 − ρ0 | ρ0.3 − ρ1 | "
             "comparisons expected to resolve | Si-BNN − sign half-width ≤ d/2 |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    scored = []
    for setup in dict.fromkeys(r["setup"] for r in runs):
        rs = [r for r in runs if r["setup"] == setup]
        by = {c: {r["seed"]: r["top1"] for r in rs if r["config"] == c} for c in CONFIGS}
        trial_cpu = min(r["seconds"] for r in rs) + overhead_cpu_s
        k = int((margin * budget_s - fixed_s) * cpu_rate // (n_configs * trial_cpu))
        ratios = []
        for a, b, _ in DIFFS:
            diffs = [by[a][s] - by[b][s] for s in by[a]]
            d, sd = statistics.fmean(diffs), statistics.stdev(diffs)
            ratios.append(math.inf if d == 0 or k < 2 else t_quantile(k - 1) * sd / math.sqrt(k) / abs(d))
        n_resolve = sum(x < 1 for x in ratios)
        scored.append((-n_resolve, ratios[0], setup, k))
        lines.append(f"| {setup} | {trial_cpu:.1f} | {k} | " + " | ".join(f"{x:.2f}" for x in ratios) +
                     f" | {n_resolve} | {'yes' if ratios[0] <= 0.5 else 'no'} |")
    _, _, best, k = min(scored)
    lines.append(f"\nchosen: {best} with {k} seeds")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setups", default=DEFAULT_SETUPS)
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    ap.add_argument("--configs", default="sibnn0.3,sibnn0,sibnn1,sign")
    ap.add_argument("--arch", default="mlp_small")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    ap.add_argument("--out", type=Path, help="write every run as JSON (appends to what is there)")
    rule = ap.add_argument_group("the selection rule (docs/demo.md); defaults measured by bench/demo.py")
    rule.add_argument("--budget-s", type=float, default=150.0, help="make demo's limit after setup")
    rule.add_argument("--margin", type=float, default=0.9, help="plan for this fraction of the budget")
    rule.add_argument("--fixed-s", type=float, default=35.0, help="stack start, job start and the end: not trials")
    rule.add_argument("--cpu-rate", type=float, default=1.97, help="trial CPU-s per second of the trial phase")
    rule.add_argument("--overhead-cpu-s", type=float, default=2.2, help="per trial, besides its training")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    done = json.loads(args.out.read_text()) if args.out and args.out.exists() else []
    have = {(r["setup"], r["config"], r["seed"]) for r in done}
    jobs = [(s, c, seed, args.arch) for s in args.setups.split(",") for c in args.configs.split(",")
            for seed in seeds if (s, c, seed) not in have]
    os.environ["OMP_NUM_THREADS"] = "1"
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        for r in pool.imap_unordered(_run, jobs):
            done.append(r)
            print(f"{time.perf_counter() - t0:7.1f}s {r['setup']} {r['config']} s{r['seed']}: {r['top1']:.2f} "
                  f"({r['seconds']:.1f} s)", flush=True)
            if args.out:
                args.out.write_text(json.dumps(done, indent=1))
    mine = [r for r in done if r["setup"] in args.setups.split(",")]
    print(report(mine))
    print(choose(mine, budget_s=args.budget_s, margin=args.margin, fixed_s=args.fixed_s, cpu_rate=args.cpu_rate,
                 overhead_cpu_s=args.overhead_cpu_s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
