"""Where Si-BNN's training-step overhead over FP goes on the CPU: each binarizer part timed alone, then a profile.

    python bench/binarizer_cost.py                      # ResNet-18, 64 px, batch 16 (bench/train_step.py's step)
    python bench/binarizer_cost.py --profile 0          # the part timings only

Part timings (forward + backward over the shapes one step of ``--arch`` sees, rows interleaved in rounds, median
and minimum ms): the activation binarizers of all binary layers (ReLU — FP's activation —, the reference
``si_binarize``, the fused op ``si_binarize_fused``), the weight binarizer of all binary layers (``binarize_weight``,
the authors' rule; its forward alone), and the latent-weight clamp after the optimiser step. Then, with
``--profile N``, torch.profiler's self-CPU time per op over N whole steps of FP and of Si-BNN (``SiBinarize`` as it
comes), the ops with the largest difference first.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import make_step  # noqa: E402  (bench/ is not a package)

from sibnn.fused import si_binarize_fused  # noqa: E402
from sibnn.layers import binary_layers, clamp_latent_weights_  # noqa: E402
from sibnn.models import create_model  # noqa: E402
from sibnn.quant import SiBinarize, binarize_weight, si_binarize  # noqa: E402


def parts(args) -> dict:
    torch.manual_seed(0)
    model = create_model(args.arch, "sibnn", num_classes=1000)
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((i[0].shape, m)))
             for m in model.modules() if isinstance(m, SiBinarize)]
    with torch.no_grad():
        model(torch.randn(args.batch, 3, args.size, args.size))
    for h in hooks:
        h.remove()
    xs = [(0.5 * torch.randn(s)).requires_grad_() for s, _ in seen]
    gs = [torch.randn(s) for s, _ in seen]
    ws = [m.weight for _, m in binary_layers(model)]
    wgs = [torch.randn_like(w) for w in ws]

    def act(fn):
        def run():
            for x, g, (_, m) in zip(xs, gs, seen):
                x.grad = None
                fn(x, m).backward(g)
        return run

    def weights():
        for w, g in zip(ws, wgs):
            w.grad = None
            binarize_weight(w).backward(g)

    def weights_fwd():
        with torch.no_grad():
            for w in ws:
                binarize_weight(w)

    rows = {
        "activation: ReLU (FP)": act(lambda x, m: torch.relu(x)),
        "activation: si_binarize (reference)": act(lambda x, m: si_binarize(x, m.theta, m.scale, m.rho)),
        "activation: si_binarize_fused": act(lambda x, m: si_binarize_fused(x, m.theta, m.scale, m.rho)),
        "weights: binarize_weight (authors), fwd+bwd": weights,
        "weights: binarize_weight, fwd only": weights_fwd,
        "latent-weight clamp": lambda: clamp_latent_weights_(model),
    }
    for run in rows.values():
        run()
    times = {r: [] for r in rows}
    for _ in range(args.rounds):
        for r, run in rows.items():
            t = time.perf_counter()
            run()
            times[r].append(time.perf_counter() - t)
    return {r: (statistics.median(ts), min(ts)) for r, ts in times.items()}


def profile(args) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    out = {}
    for b in ("fp", "sibnn"):
        step = make_step(args.arch, b, argparse.Namespace(batch=args.batch, size=args.size, amp=False,
                                                          channels_last=False, compile=False), torch.device("cpu"))
        for _ in range(2):
            step()
        with prof(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(args.profile):
                step()
        out[b] = {e.key: e.self_cpu_time_total / 1e3 / args.profile for e in p.key_averages()}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--profile", type=int, default=3, help="profiled steps per model (0: no profile)")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    print(f"{args.arch}, batch {args.batch}, {args.size} px, CPU, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print("| part (all binary layers, one step) | ms (median) | ms (min) |")
    print("|---|---:|---:|")
    for r, (med, lo) in parts(args).items():
        print(f"| {r} | {1e3 * med:.1f} | {1e3 * lo:.1f} |")
    if args.profile:
        ops = profile(args)
        fp, si = ops["fp"], ops["sibnn"]
        diff = sorted(set(fp) | set(si), key=lambda k: -(si.get(k, 0.0) - fp.get(k, 0.0)))
        print(f"\nself-CPU ms per step (torch.profiler, {args.profile} steps each; profiler overhead included): "
              f"FP {sum(fp.values()):.1f}, Si-BNN {sum(si.values()):.1f}")
        print("| op | FP | Si-BNN | Si-BNN − FP |")
        print("|---|---:|---:|---:|")
        for k in diff[:args.top]:
            print(f"| {k} | {fp.get(k, 0.0):.1f} | {si.get(k, 0.0):.1f} | {si.get(k, 0.0) - fp.get(k, 0.0):+.1f} |")


if __name__ == "__main__":
    main()
