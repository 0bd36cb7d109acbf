"""Per-step training time of ResNet-18 with Si-BNN vs sign vs FP binarizers, as a table with the ratio to FP.

    python bench/train_step.py                                  # CPU, 64 px, batch 16
    python bench/train_step.py --device cuda --size 224 --batch 256 --amp --channels-last [--compile]
    python bench/train_step.py --binarizers fp,sibnn --weight-grad authors,ste   # cost of the authors' rule
    python bench/train_step.py --binarizers fp,sibnn-fused,sibnn-ref [--compile]   # fused binarizer vs reference

``sibnn`` is the Si-BNN layer as it comes (``SiBinarize.fused`` auto: the fused op on the CPU and on CUDA with
Triton, the reference elsewhere); ``sibnn-fused`` forces the fused op (``sibnn.fused``), ``sibnn-ref`` the reference
(the detach trick of ``sibnn.quant.si_binarize``). ``bench/binarizer_cost.py`` splits the overhead into its parts.

A step is forward + backward + Adam step + latent-weight clamp, on synthetic tensors (no data loading), timed after
warm-up with the device synchronised. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from sibnn.layers import clamp_latent_weights_
from sibnn.models import create_model
from sibnn.quant import SiBinarize
from sibnn.recipe import build_optimizer, get_recipe


def make_step(arch, binarizer, args, device, weight_grad="authors"):
    torch.manual_seed(0)
    base, _, variant = binarizer.partition("-")
    model = create_model(arch, base, num_classes=1000, weight_grad=weight_grad).to(device)
    if variant:
        if variant not in ("fused", "ref"):
            raise SystemExit(f"unknown binarizer variant {binarizer!r}: use sibnn-fused or sibnn-ref")
        for m in model.modules():
            if isinstance(m, SiBinarize):
                m.fused = variant == "fused"
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, get_recipe("aaai"))
    net = torch.compile(model) if args.compile else model
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        clamp_latent_weights_(model)

    return step


def measure(steps: dict, args, device) -> dict:
    """Rounds that visit every binarizer in turn, so drift in the machine's speed hits all of them alike;
    the median over all timed steps is reported."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for step in steps.values():
        for _ in range(args.warmup):
            step()
    sync()
    times = {b: [] for b in steps}
    for _ in range(args.rounds):
        for b, step in steps.items():
            for _ in range(args.steps):
                t = time.perf_counter()
                step()
                sync()
                times[b].append(time.perf_counter() - t)
    return {b: (statistics.median(ts), statistics.pstdev(ts)) for b, ts in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5, help="timed steps per binarizer per round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--amp", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--binarizers", default="fp,sign,sibnn")
    p.add_argument("--weight-grad", default="authors",
                   help="comma list of binary weight gradient rules (authors, ste); >1 gives a row per rule")
    args = p.parse_args()
    device = torch.device(args.device)
    grads = args.weight_grad.split(",")
    steps = {}
    for b in args.binarizers.split(","):
        for g in (grads if b != "fp" and len(grads) > 1 else grads[:1]):
            steps[b if b == "fp" or len(grads) == 1 else f"{b} ({g})"] = make_step(args.arch, b, args, device, g)
    rows = measure(steps, args, device)
    fp = rows.get("fp", (None,))[0]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.arch}, batch {args.batch}, {args.size} px, {name}, amp={args.amp}, channels_last="
          f"{args.channels_last}, compile={args.compile}, torch {torch.__version__}")
    print("| binarizer | ms / step (median) | ± | images/s | × FP |")
    print("|---|---:|---:|---:|---:|")
    for b, (med, sd) in rows.items():
        ratio = f"{med / fp:.2f}" if fp else "–"
        print(f"| {b} | {1e3 * med:.1f} | {1e3 * sd:.1f} | {args.batch / med:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
