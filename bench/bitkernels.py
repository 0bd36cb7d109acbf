"""Per-layer latency of the binary conv / linear kernels (sibnn/infer/csrc/bitkernels.c) at batch 1 on the binary
layer shapes of ResNet-18 (224 px) and AlexNet (227 px), at 1 and 2 threads. Prints a markdown table of median ms.

    python bench/bitkernels.py [--threads 1,2] [--repeats 15] [--baseline OLD_bitkernels.c]

``--baseline``: also time an older bitkernels.c (the im2col + bgemm API of before the direct kernels: built here
into its own .so, driven the old way), interleaved with the current kernels in the same process, same inputs.
Weights and activations are random bits (timing does not depend on their values; tests/sibnn/test_infer_kernels.py
covers exactness). The ResNet convs run with the fused epilogue the runtime uses (α·BN, + shortcut in unit 2).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sibnn.infer import kernels
from sibnn.infer import reference as R

# (name, count in the network, n, cin, h, w, cout, k, stride, pad, epilogue: None | "affine" | "residual")
LAYERS = [
    ("resnet18 s0 64→64 56² 3×3", 4, 1, 64, 56, 56, 64, 3, 1, 1, "residual"),
    ("resnet18 s1 64→128 56²/2", 1, 1, 64, 56, 56, 128, 3, 2, 1, "affine"),
    ("resnet18 s1 128→128 28²", 3, 1, 128, 28, 28, 128, 3, 1, 1, "residual"),
    ("resnet18 s2 128→256 28²/2", 1, 1, 128, 28, 28, 256, 3, 2, 1, "affine"),
    ("resnet18 s2 256→256 14²", 3, 1, 256, 14, 14, 256, 3, 1, 1, "residual"),
    ("resnet18 s3 256→512 14²/2", 1, 1, 256, 14, 14, 512, 3, 2, 1, "affine"),
    ("resnet18 s3 512→512 7²", 3, 1, 512, 7, 7, 512, 3, 1, 1, "residual"),
    ("alexnet conv2 96→256 27² 5×5", 1, 1, 96, 27, 27, 256, 5, 1, 2, None),
    ("alexnet conv3 256→384 13²", 1, 1, 256, 13, 13, 384, 3, 1, 1, None),
    ("alexnet conv4 384→384 13²", 1, 1, 384, 13, 13, 384, 3, 1, 1, None),
    ("alexnet conv5 384→256 13²", 1, 1, 384, 13, 13, 256, 3, 1, 1, None),
    ("alexnet fc6 9216→4096", 1, 1, 9216, 1, 1, 4096, 0, 0, 0, None),
    ("alexnet fc7 4096→4096", 1, 1, 4096, 1, 1, 4096, 0, 0, 0, None),
]


class Baseline:
    """The pre-direct-kernel API: torch.zeros im2col buffer + sibnn_im2col + sibnn_bgemm (rows padded to 4)."""

    def __init__(self, src: Path):
        self.dir = tempfile.TemporaryDirectory()
        so = Path(self.dir.name) / "baseline.so"
        flags = ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=c11", "-march=native"]
        subprocess.run([os.environ.get("CC", "gcc"), *flags, "-o", str(so), str(src)], check=True)
        lib = self.lib = ctypes.CDLL(str(so))
        i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
        lib.sibnn_im2col.argtypes = [ptr, i64, i64, i64, i64, i64, i64, i64, i64, i64, ptr, c_int]
        lib.sibnn_bgemm.argtypes = [ptr, i64, i64, ptr, i64, ptr, ptr, ptr, ptr, i64, c_int]

    def bgemm(self, A, rows, blocked, co, epilogue=None):
        L, co_pad = blocked.shape[1], blocked.shape[0] * 16
        out = torch.empty(A.shape[0], co_pad, dtype=torch.float32)
        scale, shift, res = epilogue if epilogue is not None else (None, None, None)
        self.lib.sibnn_bgemm(A.data_ptr(), A.shape[0], L, blocked.data_ptr(), co_pad, out.data_ptr(),
                             scale.data_ptr() if scale is not None else None,
                             shift.data_ptr() if shift is not None else None,
                             res.data_ptr() if res is not None else None, rows, torch.get_num_threads())
        return out[:rows, :co]

    def conv(self, packed, channels, weight_packed, k, stride, padding, blocked, epilogue=None):
        n, h, w, cw = packed.shape
        ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
        rows = n * ho * wo
        A = torch.zeros(-(-rows // 4) * 4, k * k * cw, dtype=torch.int64)
        self.lib.sibnn_im2col(packed.contiguous().data_ptr(), n, h, w, cw, k, stride, padding, ho, wo, A.data_ptr(),
                              torch.get_num_threads())
        co = weight_packed.shape[0]
        if epilogue is not None:
            scale, shift, res = epilogue
            res = res.permute(0, 2, 3, 1).contiguous().view(rows, co) if res is not None else None
            epilogue = (scale.contiguous(), shift.contiguous(), res)
        return self.bgemm(A, rows, blocked, co, epilogue).reshape(n, ho, wo, co).permute(0, 3, 1, 2)

    def linear(self, packed, features, weight_packed, blocked):
        rows = packed.shape[0]
        A = packed.contiguous()
        if rows % 4:
            A = torch.cat([A, A.new_zeros(4 - rows % 4, A.shape[1])])
        return self.bgemm(A, rows, blocked, weight_packed.shape[0])


def make_calls(layer, baseline: Baseline | None):
    name, _, n, cin, h, w, cout, k, stride, pad, epi = layer
    g = torch.Generator().manual_seed(0)
    if k == 0:  # linear
        a = R.pack_bits(torch.rand(n, cin, generator=g) < 0.5)
        u = R.pack_bits(torch.rand(cout, cin, generator=g) < 0.5)
        blocked = kernels.block_weights(u)
        new = lambda: kernels.binary_linear(a, cin, u, blocked)
        old = (lambda: baseline.linear(a, cin, u, blocked)) if baseline else None
        return new, old
    a = R.pack_bits(torch.rand(n, h, w, cin, generator=g) < 0.5)
    u = R.pack_bits(torch.rand(cout, k, k, cin, generator=g) < 0.5)
    blocked = kernels.block_weights(u)
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    epilogue = None
    if epi is not None:
        res = torch.randn(n, cout, ho, wo, generator=g).contiguous(memory_format=torch.channels_last)
        epilogue = (torch.randn(cout, generator=g), torch.randn(cout, generator=g), res if epi == "residual" else None)
    new = lambda: kernels.binary_conv2d(a, cin, u, k, stride, pad, blocked, epilogue)
    old = (lambda: baseline.conv(a, cin, u, k, stride, pad, blocked, epilogue)) if baseline else None
    if baseline is not None:  # the two must agree before their times mean anything
        assert torch.equal(new(), old()), name
    return new, old


def per_call(fn, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--inner", type=int, default=10, help="calls per timed sample")
    ap.add_argument("--baseline", type=Path, help="an older bitkernels.c to time against, interleaved")
    args = ap.parse_args(argv)
    baseline = Baseline(args.baseline) if args.baseline else None
    threads = [int(t) for t in args.threads.split(",")]
    print(f"backend {kernels.backend()}, torch {torch.__version__}, load {os.getloadavg()[0]:.2f}, "
          f"median of {args.repeats} × {args.inner} calls, ms per call (batch 1)\n")
    cols = [f"{t} thr" for t in threads]
    if baseline:
        cols = [c for t in threads for c in (f"old {t} thr", f"new {t} thr", f"× {t} thr")]
    print("| layer | × in net | " + " | ".join(cols) + " |")
    print("|---|---:|" + "---:|" * len(cols))
    totals = {}
    for layer in LAYERS:
        new, old = make_calls(layer, baseline)
        cells = []
        for t in threads:
            torch.set_num_threads(t)
            new(), old and old()  # warm up
            tn, to = [], []
            for _ in range(args.repeats):
                tn.append(per_call(new, args.inner))
                if old:
                    to.append(per_call(old, args.inner))
            mn = statistics.median(tn) * 1e3
            net = layer[0].split()[0]
            totals.setdefault((net, t, "new"), 0.0)
            totals[(net, t, "new")] += mn * layer[1]
            if old:
                mo = statistics.median(to) * 1e3
                totals[(net, t, "old")] = totals.get((net, t, "old"), 0.0) + mo * layer[1]
                cells += [f"{mo:.3f}", f"{mn:.3f}", f"{mo / mn:.2f}"]
            else:
                cells.append(f"{mn:.3f}")
        print(f"| {layer[0]} | {layer[1]} | " + " | ".join(cells) + " |", flush=True)
    for net in ("resnet18", "alexnet"):
        cells = []
        for t in threads:
            mn = totals[(net, t, "new")]
            if baseline:
                mo = totals[(net, t, "old")]
                cells += [f"{mo:.3f}", f"{mn:.3f}", f"{mo / mn:.2f}"]
            else:
                cells.append(f"{mn:.3f}")
        print(f"| **{net} binary layers, total** | | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
