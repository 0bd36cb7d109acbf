"""The Si-BNN activation binarizer as one fused autograd op (METHOD.md §1): one pass forward, one backward.

    b = 1[y ≥ 0],  y = (x − θ)·s computed in float32 whatever x's dtype (the reference ``sibnn.quant.si_binarize``)
    ∂x = s·g·w,  ∂θ = −Σ s·g·w,  ∂s = Σ (x − θ)·g·w,   w = 1[−ρ < y < 1],  sums over everything but the channel

``si_binarize_fused(x, theta, scale, rho)`` returns b in x's dtype. ``theta``/``scale`` are (C,) per channel or
(1,) per layer; x is (N, C) or (N, C, H, W), contiguous or channels_last.

* CUDA: two Triton kernels registered with ``torch.library.triton_op`` so ``torch.compile`` traces them without a
  graph break: the forward reads x once and writes b; the backward reads x and g once, writes ∂x and per-block
  partial sums of ∂θ and ∂s (no atomics, so the result does not depend on scheduling), which a small ``sum`` folds.
  Only y's sign and the window edges are compared, so b is bit-identical to the reference; the sums accumulate in
  float32 in another order than autograd's, so ∂θ, ∂s agree to float rounding.
* CPU (and CUDA without Triton): the same formulas as a few whole-tensor torch ops in an autograd Function —
  nothing saved but x (the reference's detach trick keeps y and the window alive for backward). The forward is
  three passes (x − θ, ·s and 1[y ≥ 0] in place); the backward builds the window as a float mask from in-place
  comparisons (on the CPU bool masks and ``torch.where`` cost many times a float multiply) and takes g·window like
  the reference's backward. ``SiBinarize`` uses this path by default on the CPU (faster than the reference there,
  docs/benchmarks.md).

The forward ``x − θ`` then ``·s`` is evaluated exactly as the reference evaluates it (two float32 roundings, no
FMA contraction), so b is bit for bit the reference's also at the window edges.
"""
from __future__ import annotations

import os

import torch

try:   # Triton ships with CUDA builds of torch; CPU-only installs have none and use the torch path
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton
    HAVE_TRITON = True
except ImportError:   # pragma: no cover - depends on the install
    HAVE_TRITON = False


def _layout(x: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """(x made dense, rows M, channels C, inner): element (m, c, i) at m·C·inner + c·inner + i.

    channels_last (N, C, H, W) and (N, C) are (M = N·H·W, C, inner = 1); contiguous NCHW is (M = N, C, inner = H·W).
    """
    if x.dim() == 2:
        return x.contiguous(), x.shape[0], x.shape[1], 1
    n, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return x, n * h * w, c, 1
    return x.contiguous(), n, c, h * w


def _check(x: torch.Tensor, theta: torch.Tensor) -> None:
    if x.dim() not in (2, 4):
        raise ValueError(f"binarizer input must be (N, C) or (N, C, H, W), got shape {tuple(x.shape)}")
    if theta.numel() not in (1, x.shape[1]):
        raise ValueError(f"theta has {theta.numel()} values for {x.shape[1]} channels")


def _view(p: torch.Tensor, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return p.to(dtype).view(1, -1, *([1] * (x.dim() - 2)))


def _dims(x: torch.Tensor) -> tuple[int, ...]:
    return (0,) + tuple(range(2, x.dim()))


# ----------------------------------------------------------------------------------------------- the torch path
# Few, mostly in-place passes: on the CPU the activations of a small step are cache-sized, so the cost is the number
# of kernels and temporaries, not bandwidth. In-place ops round exactly like their out-of-place forms.

def _cdt(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)   # the reference's compute dtype (float64 stays float64)


def _fwd_torch(x, theta, scale):
    cd = _cdt(x)
    y = torch.sub(x.to(cd), _view(theta, x, cd)).mul_(_view(scale, x, cd))   # exactly the reference's two roundings
    b = y.ge_(0)                                                               # 1.0 / 0.0 written over y
    return b if b.dtype == x.dtype else b.to(x.dtype)


def _bwd_torch(x, theta, scale, g, rho):
    # The window as a float 1/0 mask from in-place comparisons (on CPU a bool mask, and torch.where on it, cost 5-20×
    # a float multiply), and g·window like the reference's backward (the same product, also for a non-finite g).
    cd = _cdt(x)
    s = _view(scale, x, cd)
    d = torch.sub(x.to(cd), _view(theta, x, cd))
    y = d * s
    gw = torch.clone(y).gt_(-rho)                            # 1.0 where y > −ρ
    gw.mul_(y.lt_(1)).mul_(g)                                # · 1[y < 1] · g
    gx = gw * s
    dims = _dims(x)
    dtheta, dscale = gx.sum(dims).neg_(), gw.mul_(d).sum(dims)
    if theta.numel() == 1:
        dtheta, dscale = dtheta.sum().view(1), dscale.sum().view(1)
    return gx if gx.dtype == x.dtype else gx.to(x.dtype), dtheta, dscale


# ---------------------------------------------------------------------------------------------- the Triton path

if HAVE_TRITON:
    @triton.jit
    def _fwd_kernel(x_ptr, th_ptr, s_ptr, b_ptr, total, C, inner, PER_LAYER: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = offs < total
        c = offs * 0 if PER_LAYER else (offs // inner) % C
        x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
        th = tl.load(th_ptr + c, mask=m, other=0.0)
        s = tl.load(s_ptr + c, mask=m, other=0.0)
        y = (x - th) * s
        tl.store(b_ptr + offs, tl.where(y >= 0, 1.0, 0.0).to(b_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _bwd_math(x, g, th, s, rho):
        d = x - th
        y = d * s
        gw = tl.where((y > -rho) & (y < 1.0), g, 0.0)
        return gw * s, gw * d

    @triton.jit
    def _bwd_tile_kernel(x_ptr, g_ptr, th_ptr, s_ptr, gx_ptr, pth_ptr, ps_ptr, M, C, rho,
                         PER_LAYER: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr):
        # (M, C) with C contiguous (channels_last, linear): a (BM rows × BC channels) tile per program, partial sums
        # per (row block, channel) so no two programs write the same place
        pm, pc = tl.program_id(0), tl.program_id(1)
        rows = pm * BM + tl.arange(0, BM)
        chans = pc * BC + tl.arange(0, BC)
        cm = chans < C
        pidx = chans * 0 if PER_LAYER else chans
        th = tl.load(th_ptr + pidx, mask=cm, other=0.0)
        s = tl.load(s_ptr + pidx, mask=cm, other=0.0)
        ok = (rows[:, None] < M) & cm[None, :]
        offs = rows[:, None].to(tl.int64) * C + chans[None, :]
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        gx, gd = _bwd_math(x, tl.where(ok, g, 0.0), th[None, :], s[None, :], rho)
        tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty), mask=ok)
        tl.store(pth_ptr + pm * C + chans, -tl.sum(gx, axis=0), mask=cm)
        tl.store(ps_ptr + pm * C + chans, tl.sum(gd, axis=0), mask=cm)

    @triton.jit
    def _bwd_rows_kernel(x_ptr, g_ptr, th_ptr, s_ptr, gx_ptr, pth_ptr, ps_ptr, C, inner, rho,
                         PER_LAYER: tl.constexpr, BLOCK: tl.constexpr):
        # contiguous NCHW: one program per (n, c) row of H·W contiguous values, its sums at partial[n, c]
        row = tl.program_id(0)
        c = 0 if PER_LAYER else row % C
        th = tl.load(th_ptr + c)
        s = tl.load(s_ptr + c)
        acc_th = tl.zeros((BLOCK,), dtype=tl.float32)
        acc_s = tl.zeros((BLOCK,), dtype=tl.float32)
        base = row.to(tl.int64) * inner
        for i0 in range(0, inner, BLOCK):
            idx = i0 + tl.arange(0, BLOCK)
            ok = idx < inner
            x = tl.load(x_ptr + base + idx, mask=ok, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + base + idx, mask=ok, other=0.0).to(tl.float32)
            gx, gd = _bwd_math(x, g, th, s, rho)
            tl.store(gx_ptr + base + idx, gx.to(gx_ptr.dtype.element_ty), mask=ok)
            acc_th += gx
            acc_s += gd
        tl.store(pth_ptr + row, -tl.sum(acc_th, axis=0))
        tl.store(ps_ptr + row, tl.sum(acc_s, axis=0))

    @triton_op("sibnn::si_binarize_fwd", mutates_args={})
    def _fwd_triton(x: torch.Tensor, theta: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        xd, m, c, inner = _layout(x)
        b = torch.empty_like(xd)
        total, block = xd.numel(), 1024
        wrap_triton(_fwd_kernel)[(triton.cdiv(total, block),)](
            xd, theta.float().contiguous(), scale.float().contiguous(), b, total, c, inner,
            PER_LAYER=theta.numel() == 1, BLOCK=block)
        return b

    @triton_op("sibnn::si_binarize_bwd", mutates_args={})
    def _bwd_triton(x: torch.Tensor, theta: torch.Tensor, scale: torch.Tensor, g: torch.Tensor,
                    rho: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xd, m, c, inner = _layout(x)
        cl = xd.dim() == 4 and inner == 1
        gd = g.contiguous(memory_format=torch.channels_last) if cl else g.contiguous()
        gx = torch.empty_like(xd)
        th, sc, per_layer = theta.float().contiguous(), scale.float().contiguous(), theta.numel() == 1
        if inner == 1:
            bc = min(64, triton.next_power_of_2(c))
            bm = max(16, 4096 // bc)
            grid = (triton.cdiv(m, bm), triton.cdiv(c, bc))
            pth = torch.empty(grid[0], c, device=x.device, dtype=torch.float32)
            ps = torch.empty_like(pth)
            wrap_triton(_bwd_tile_kernel)[grid](xd, gd, th, sc, gx, pth, ps, m, c, rho,
                                                PER_LAYER=per_layer, BM=bm, BC=bc)
        else:
            pth = torch.empty(m, c, device=x.device, dtype=torch.float32)
            ps = torch.empty_like(pth)
            wrap_triton(_bwd_rows_kernel)[(m * c,)](xd, gd, th, sc, gx, pth, ps, c, inner, rho,
                                                    PER_LAYER=per_layer,
                                                    BLOCK=min(1024, triton.next_power_of_2(inner)))
        dtheta, dscale = pth.sum(0), ps.sum(0)
        if theta.numel() == 1:
            dtheta, dscale = dtheta.sum().view(1), dscale.sum().view(1)
        return gx, dtheta, dscale


def _use_triton(x: torch.Tensor) -> bool:
    # TRITON_INTERPRET=1 runs the kernels on CPU tensors (the tests' way to check them without a GPU)
    return HAVE_TRITON and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


class _SiBinarize(torch.autograd.Function):
    @staticmethod
    def forward(x, theta, scale, rho):
        return (_fwd_triton if _use_triton(x) else _fwd_torch)(x, theta, scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, theta, scale, rho = inputs
        ctx.save_for_backward(x, theta, scale)
        ctx.rho = rho

    @staticmethod
    def backward(ctx, g):
        x, theta, scale = ctx.saved_tensors
        gx, dtheta, dscale = (_bwd_triton if _use_triton(x) else _bwd_torch)(x, theta, scale, g, ctx.rho)
        return gx, dtheta.to(theta.dtype), dscale.to(scale.dtype), None


def si_binarize_fused(x: torch.Tensor, theta: torch.Tensor, scale: torch.Tensor, rho: float) -> torch.Tensor:
    """b = 1[(x − θ)·s ≥ 0] in x's dtype, with the window-masked gradients of METHOD.md §1 (see the module doc)."""
    _check(x, theta)
    return _SiBinarize.apply(x, theta, scale, float(rho))
