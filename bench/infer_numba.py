"""The numba alternative for the binary kernels (issue 7 asks for C or numba, justified by measurement): a direct
binary convolution in numba with LLVM's popcount intrinsic (``llvm.ctpop.i64``, which LLVM lowers to POPCNT or,
vectorised, VPOPCNTQ), against the C kernels of ``sibnn/infer/csrc/bitkernels.c`` on the binary layer shapes of
ResNet-18 (224 px) and AlexNet (227 px) at batch 1. Both results are checked equal before timing.

    pip install -e '.[bench]'            # numba (not needed by sibnn itself)
    python bench/infer_numba.py [--threads 1,2] [--repeats 21]

Two numba kernels: the straightforward one a numba user would write (zero-padded input, output pixels in
parallel, taps and words innermost, the pixel's popcount once), and one vectorised over output channels (weights
laid out (K, K, Cw, Co) like the C kernel's blocks, so LLVM emits VPOPCNTQ); both ``fastmath``/``parallel``,
compiled for this CPU. Median of ``repeats`` timed calls each, interleaved per layer.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sibnn.infer import kernels  # noqa: E402
from sibnn.infer import reference as R  # noqa: E402

try:
    import numba
    from numba import njit, prange, types
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - optional
    sys.exit("numba is not installed: pip install -e '.[bench]'")


@intrinsic
def popcount64(typingctx, x):
    """LLVM's ctpop on a uint64."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.ctpop", [args[0].type])
        return builder.call(fn, args)
    return sig, codegen


@njit(parallel=True, fastmath=True, cache=False)
def bconv_numba(xp, w, stride, ho, wo, out):
    """xp (Hp, Wp, Cw) zero-padded packed input, w (Co, K, K, Cw) packed weights → out (ho·wo, Co) float32."""
    co_n, k, _, cw = w.shape
    for oy in prange(ho):
        for ox in range(wo):
            y0, x0 = oy * stride, ox * stride
            q = 0
            for ky in range(k):
                for kx in range(k):
                    for c in range(cw):
                        q += popcount64(xp[y0 + ky, x0 + kx, c])
            for co in range(co_n):
                s = 0
                for ky in range(k):
                    for kx in range(k):
                        for c in range(cw):
                            s += popcount64(xp[y0 + ky, x0 + kx, c] & w[co, ky, kx, c])
                out[oy * wo + ox, co] = np.float32(2 * s - q)


@njit(parallel=True, fastmath=True, cache=False)
def bconv_numba_vec(xp, wt, stride, ho, wo, out):
    """The same with weights (K, K, Cw, Co): the innermost loop runs over contiguous output channels, the layout
    the C kernel uses, so LLVM can vectorise AND + popcount + add across channels (VPOPCNTQ)."""
    k, _, cw, co_n = wt.shape
    for oy in prange(ho):
        acc = np.empty(co_n, dtype=np.int64)
        for ox in range(wo):
            y0, x0 = oy * stride, ox * stride
            acc[:] = 0
            q = 0
            for ky in range(k):
                for kx in range(k):
                    for c in range(cw):
                        a = xp[y0 + ky, x0 + kx, c]
                        q += popcount64(a)
                        for co in range(co_n):
                            acc[co] += popcount64(a & wt[ky, kx, c, co])
            for co in range(co_n):
                out[oy * wo + ox, co] = np.float32(2 * acc[co] - q)


def layers():
    """(name, Cin, H, Co, K, stride, pad) at batch 1: ResNet-18's distinct binary convs and AlexNet's conv2–5."""
    return [("resnet18 s0 64→64 56²", 64, 56, 64, 3, 1, 1), ("resnet18 s1 64→128 56²/2", 64, 56, 128, 3, 2, 1),
            ("resnet18 s1 128→128 28²", 128, 28, 128, 3, 1, 1), ("resnet18 s2 256→256 14²", 256, 14, 256, 3, 1, 1),
            ("resnet18 s3 512→512 7²", 512, 7, 512, 3, 1, 1), ("alexnet conv2 96→256 27² 5×5", 96, 27, 256, 5, 1, 2),
            ("alexnet conv3 256→384 13²", 256, 13, 384, 3, 1, 1)]


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeats", type=int, default=21)
    args = p.parse_args(argv)
    rows = []
    for name, cin, h, co, k, stride, pad in layers():
        g = torch.Generator().manual_seed(cin + co)
        x = R.pack_bits(torch.rand(1, h, h, cin, generator=g) < 0.4)
        w = R.pack_bits(torch.rand(co, k, k, cin, generator=g) < 0.5)
        blocked = kernels.block_weights(w)
        c_out = kernels.binary_conv2d(x, cin, w, k, stride, pad, blocked)
        ho = c_out.shape[-1]
        wn = np.ascontiguousarray(w.numpy().view(np.uint64))
        out = np.empty((ho * ho, co), dtype=np.float32)

        wt = np.ascontiguousarray(wn.transpose(1, 2, 3, 0))

        def numba_call():
            xq = np.pad(x[0].numpy().view(np.uint64), ((pad, pad), (pad, pad), (0, 0)))  # padding is part of it
            bconv_numba(xq, wn, stride, ho, ho, out)

        def numba_vec_call():
            xq = np.pad(x[0].numpy().view(np.uint64), ((pad, pad), (pad, pad), (0, 0)))
            bconv_numba_vec(xq, wt, stride, ho, ho, out)
        expect = c_out.permute(0, 2, 3, 1).reshape(-1, co).numpy()
        for fn in (numba_call, numba_vec_call):
            out[:] = np.nan
            fn()
            assert np.array_equal(out, expect), f"{name}: numba and C differ"
        cells = [name]
        for t in (int(v) for v in args.threads.split(",")):
            torch.set_num_threads(t)
            numba.set_num_threads(t)
            c_ms, nb_ms, nv_ms = [], [], []
            for _ in range(3):  # interleave
                c_ms.append(median_ms(lambda: kernels.binary_conv2d(x, cin, w, k, stride, pad, blocked),
                                      args.repeats))
                nb_ms.append(median_ms(numba_call, args.repeats))
                nv_ms.append(median_ms(numba_vec_call, args.repeats))
            c, nb, nv = statistics.median(c_ms), statistics.median(nb_ms), statistics.median(nv_ms)
            cells += [f"{c:.3f}", f"{nb:.3f} ({nb / c:.1f}×)", f"{nv:.3f} ({nv / c:.1f}×)"]
        rows.append("| " + " | ".join(cells) + " |")
    threads = args.threads.split(",")
    head = "| layer (batch 1) | " + " | ".join(f"C {t} thr ms | numba {t} thr ms (÷ C) | numba vectorised {t} thr ms "
                                               f"(÷ C)" for t in threads) + " |"
    print(f"`python bench/infer_numba.py --threads {args.threads} --repeats {args.repeats}` — numba "
          f"{numba.__version__}, kernels `{kernels.backend()}`, torch {torch.__version__}\n")
    print(head)
    print("|---|" + "---:|" * (3 * len(threads)))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
