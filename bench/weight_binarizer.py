"""Forward + backward time of the binary weights alone (``binarize_weight`` over every binary layer of a model).

    python bench/weight_binarizer.py                 # ResNet-18's 11 M binary weights, CPU

Rows: the op (``torch.ops.sibnn.binarize_weight``) and the detach-trick reference
(``binarize_weight_reference``), each with the authors' rule and the ste ablation; rounds visit every row in turn.
Reports the median and the minimum per pass over all layers (on a shared machine the minimum is the steadier figure).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from sibnn.layers import binary_layers
from sibnn.models import create_model
from sibnn.quant import binarize_weight, binarize_weight_reference


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    torch.manual_seed(0)
    model = create_model(args.arch, "sibnn", num_classes=1000)
    ws = [m.weight for _, m in binary_layers(model)]
    gs = [torch.randn_like(w) for w in ws]
    rows = {f"{name} ({grad})": (fn, grad) for name, fn in (("op", binarize_weight),
                                                             ("reference", binarize_weight_reference))
            for grad in ("authors", "ste")}

    def run(fn, grad):
        for w, g in zip(ws, gs):
            w.grad = None
            fn(w, grad).backward(g)

    for fn, grad in rows.values():
        run(fn, grad)
    times = {r: [] for r in rows}
    for _ in range(args.rounds):
        for r, (fn, grad) in rows.items():
            t = time.perf_counter()
            run(fn, grad)
            times[r].append(time.perf_counter() - t)
    print(f"{args.arch}: {sum(w.numel() for w in ws) / 1e6:.1f} M binary weights, CPU, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| weight binarizer | ms fwd+bwd (median) | ms (min) |")
    print("|---|---:|---:|")
    for r, ts in times.items():
        print(f"| {r} | {1e3 * statistics.median(ts):.1f} | {1e3 * min(ts):.1f} |")


if __name__ == "__main__":
    main()
