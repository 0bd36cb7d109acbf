"""Packed Si-BNN inference vs PyTorch FP32 on the CPU (issue 7): latency at batch 1, throughput at batch 32, file
sizes, and where the packed model's time goes. Prints a markdown table.

    python bench/infer.py [--threads 2] [--archs resnet18,alexnet] [--repeats 20] [--rounds 3] [--out FILE]

Baselines, same architecture, same thread count, eval mode, no autograd:
  * "FP32 network": the full-precision model (binarizer="fp": ReLU activations, real weights), the journal's
    comparison (METHOD.md §5);
  * "Si-BNN, PyTorch": the trained binary model as sibnn runs it (float convs, weights binarized in forward).
  * "FP network, PyTorch bfloat16": the same FP model converted to bfloat16 once (AMX/AVX512-BF16 through
    oneDNN), for scale — shown only where the CPU runs bfloat16 natively.
The int8 packed row's full-precision convs run in the arithmetic ``fpops.int8_compute`` picks (bfloat16 where
native); "bits ≠ trained" counts the packed model's binary activations that differ from the trained model's on
the batch-1 input. Weights and BN statistics are random (timing does not depend on their values; the exactness
tests cover values).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import io
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from sibnn.infer import binary_activations, fpops, kernels, pack_model
from sibnn.infer.runtime import median_latency
from sibnn.models import create_model
from sibnn.quant import SiBinarize

BF16 = "FP network, PyTorch bfloat16 (weights converted once)"
SIZES = {"resnet18": 224, "alexnet": 227, "vgg_variant": 224}


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if isinstance(m, SiBinarize):
                m.theta.copy_(torch.randn(m.theta.shape, generator=g) * 0.2)
    return model.eval()


def timeit(fn, x, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after two warm-up calls."""
    return median_latency(fn, x, repeats, warmup=2)


def state_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def bench_arch(arch: str, repeats: int, batch: int, rounds: int = 3) -> tuple[list[str], list[str], dict]:
    size = SIZES[arch]
    fp = create_model(arch, "fp").eval()
    bnn = randomize(create_model(arch, "sibnn"))
    packed = pack_model(bnn)
    with tempfile.TemporaryDirectory() as tmp:
        f32 = packed.save(Path(tmp) / "f32.sibnn")
        packed8 = pack_model(bnn, fp_dtype="int8")
        i8 = packed8.save(Path(tmp) / "i8.sibnn")
    x1, xb = torch.randn(1, 3, size, size), torch.randn(batch, 3, size, size)
    int8_label = f"Si-BNN packed, int8 FP layers ({packed8.int8_compute} convs)"
    runs = [("FP32 network (PyTorch)", fp), ("Si-BNN, PyTorch eval", bnn), ("Si-BNN packed", packed),
            (int8_label, packed8)]
    if fpops.bf16_available():   # weights converted once, channels_last bfloat16 inputs: PyTorch's best case
        fp16 = copy.deepcopy(fp).to(torch.bfloat16, memory_format=torch.channels_last)
        runs.insert(1, (BF16, lambda x: fp16(x.to(torch.bfloat16, memory_format=torch.channels_last))))
    _, ref_bits = binary_activations(bnn, x1)
    total_bits = sum(v.numel() for v in ref_bits.values())
    rows, res, flips = [], {}, {}
    # Rounds interleave the runtimes, so a slow stretch of a shared machine hits them all; per runtime the median
    # over rounds of each round's median.
    per_round: dict[str, list] = {label: [] for label, _ in runs}
    for _ in range(rounds):
        for label, fn in runs:
            per_round[label].append((timeit(fn, x1, repeats), batch / timeit(fn, xb, max(3, repeats // 5))))
    for label, fn in runs:
        res[label] = tuple(statistics.median(v[i] for v in per_round[label]) for i in (0, 1))
        if fn in (packed, packed8):
            _, bits = fn(x1, return_bits=True)
            n = sum(int((bits[k].to(v.dtype) != v).sum()) for k, v in ref_bits.items())
            flips[label] = f"{n} / {total_bits} ({n / total_bits:.1e})"
    base_lat, base_thr = res["FP32 network (PyTorch)"]
    sizes = {"FP32 network (PyTorch)": state_bytes(fp), "Si-BNN, PyTorch eval": state_bytes(bnn),
             "Si-BNN packed": f32, int8_label: i8, BF16: state_bytes(fp) // 2}
    for label, (lat, thr) in res.items():
        rows.append(f"| {arch} ({size}) | {label} | {lat * 1e3:.1f} | {base_lat / lat:.1f}× | {thr:.1f} | "
                    f"{thr / base_thr:.1f}× | {sizes[label] / 1e6:.2f} ({sizes[label] / 2**20:.2f} MiB) | "
                    f"{flips.get(label, '')} |")
    # Where each packed model's time goes at batch 1: per step, the median over 11 runs.
    kinds = {op["name"]: op["op"] for op in packed.program}
    prof_rows = []
    for label, model in [("float32 FP layers", packed), ("int8 FP layers", packed8)]:
        runs = []
        with torch.no_grad():
            model(x1)
            for _ in range(11):
                prof: dict[str, float] = {}
                model(x1, profile=prof)
                runs.append(prof)
        groups: dict[str, float] = {}
        for name in runs[0]:  # a fused step is keyed by its first op (a conv with its pool, a bconv with its
            k = kinds[name]   # affine and residual add)
            g = {"conv": "FP conv (first conv + its pool/BN, downsample 1×1)", "linear": "FP linear (classifier)",
                 "bconv": "binary conv (AND/popcount + BN/add epilogue)", "blinear": "binary linear",
                 "threshold": "binarize + pack (folded thresholds)"}.get(k, "pools, affines, adds, other")
            groups[g] = groups.get(g, 0.0) + statistics.median(r[name] for r in runs)
        total = sum(groups.values())
        prof_rows += [f"| {arch} | {label} | {g} | {s * 1e3:.2f} | {100 * s / total:.0f} % |" for g, s in
                      sorted(groups.items(), key=lambda kv: -kv[1])]
    return rows, prof_rows, res


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--archs", default="resnet18,alexnet")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per runtime per round (batch 1)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all runtimes; medians reported")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--out", default=None, help="also write the tables (with command, machine, date) here")
    p.add_argument("--machine", default="2-core CPU dev box")
    p.add_argument("--date", default=datetime.date.today().isoformat())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    before = load()
    rows, prof_rows = [], []
    for arch in args.archs.split(","):
        r, pr, _ = bench_arch(arch, args.repeats, args.batch, args.rounds)
        rows += r
        prof_rows += pr
    after = load()
    cmd = "python bench/infer.py " + " ".join(sys.argv[1:] if argv is None else argv)
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    text = "\n".join([
        f"`{cmd}` — {args.machine} ({cpu}), {args.threads} threads, torch {torch.__version__}, kernels "
        f"`{kernels.backend()}`, {args.date}; load average (1, 5, 15 min) before {before}, after {after}.",
        "",
        "| model | runtime | batch 1 ms | speed-up | batch 32 images/s | speed-up | file MB | bits ≠ trained |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Packed model, batch 1: where the time goes",
        "",
        "| model | packed model | part | ms | share |",
        "|---|---|---|---:|---:|",
        *prof_rows,
    ])
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
