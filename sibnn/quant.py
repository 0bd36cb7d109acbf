"""Binarizers: Si-BNN's {0, +1} activations, the sign-BNN baseline, and α·sign(W) weights (METHOD.md §1–§2).

Every binarizer is written as a straight-through "detach trick" on plain tensor ops, never by swapping
``weight.data``: the forward value is the binary code, the backward is the gradient of a masked identity. That keeps
DDP, AMP (bf16) and ``torch.compile`` working unchanged. ``SiBinarize`` can also run the same rule as one fused
autograd op (``sibnn.fused``: Triton kernels on CUDA), tested bit for bit against ``si_binarize``; the weight
binarizer runs as one custom op (``torch.ops.sibnn.binarize_weight``, hand-written backward), tested against its
detach-trick reference ``binarize_weight_reference``.
"""
from __future__ import annotations

import torch
from torch import nn

from sibnn.catalog import BINARIZER_NAMES, RHO_DEFAULT, WEIGHT_GRADS, check_rho


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half/bf16 inputs (float64 stays float64): the dtype the binarizer compares in (METHOD.md §4)."""
    return torch.promote_types(x.dtype, torch.float32)


def _per_channel(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a (C,) or (1,) parameter over dimension 1 of an (N, C) or (N, C, H, W) input, in float32 at least
    (never in the input's bf16/fp16: a threshold must not move with the activation dtype, METHOD.md §4)."""
    p = p.to(_compute_dtype(x))
    if x.dim() == 2:
        return p.view(1, -1)
    if x.dim() == 4:
        return p.view(1, -1, 1, 1)
    raise ValueError(f"binarizer input must be (N, C) or (N, C, H, W), got shape {tuple(x.shape)}")


def si_binarize(x: torch.Tensor, theta: torch.Tensor, scale: torch.Tensor, rho: float) -> torch.Tensor:
    """METHOD.md §1. With y = (x − θ)·s: forward b = 1[y ≥ 0] (exactly 0 or 1);
    backward ∂L/∂y = ∂L/∂b on the open window −ρ < y < 1, zero elsewhere.

    ``y - y.detach()`` is exactly zero in value, so the output is exactly ``b``; its gradient is the window mask.
    Autograd through y = (x − θ)·s then gives the three gradients of §1 (x: s·g, θ: −s·Σg, s: Σ(x − θ)·g).
    y is computed in float32 whatever the input dtype (a bf16 x is widened exactly; θ and s are never rounded to
    bf16), and the code {0, 1} is returned in the input's dtype, where it is exact.
    """
    xc = x.to(_compute_dtype(x))
    y = (xc - _per_channel(theta, x)) * _per_channel(scale, x)
    b = (y >= 0).to(y.dtype)
    window = ((y > -rho) & (y < 1)).to(y.dtype)
    return (b + (y - y.detach()) * window).to(x.dtype)


def _sign(w: torch.Tensor) -> torch.Tensor:
    """±1 with sign(±0) = +1 (copysign is ~10× faster than a broadcasting torch.where on CPU; "+ 0.0" turns −0.0
    into +0.0)."""
    return torch.copysign(torch.ones_like(w), w + 0.0)


def sign_binarize(x: torch.Tensor) -> torch.Tensor:
    """The sign-BNN baseline: forward sign(x) ∈ {−1, +1} with 0 → +1; backward hardtanh STE (1 where |x| ≤ 1)."""
    b = _sign(x)
    window = (x.abs() <= 1).to(x.dtype)
    return b + (x - x.detach()) * window




def binarize_weight(w: torch.Tensor, grad: str = "authors", ede: nn.Module | None = None) -> torch.Tensor:
    """METHOD.md §2: W_b = α_o · sign(W), α_o = mean |W| over output channel o's filter (a row for linear layers).

    The latent weight is read clamped to [−1, 1] (the engine also clamps it after each optimiser step, see
    ``clamp_latent_weights_``). sign(0) is +1, like the activations. With g = ∂L/∂W_b and n = elements of one output
    filter, the gradient is

    * ``grad="authors"`` (default) [code: ``util.py`` ``BinOp.updateBinaryGradWeight_new``, the rule the authors'
      script calls]: ∂L/∂W = g·1[|W| ≤ 1]·(1 − 1/n) + sign(W)·mean_o(sign(W) ⊙ g) — the second term is the path
      through α;
    * ``grad="ste"`` [choice, ablation]: α detached, the masked straight-through gradient g·1[|W| ≤ 1].

    [choice] It runs as one autograd op, ``torch.ops.sibnn.binarize_weight`` (a ``torch.library.custom_op`` with a
    hand-written backward, so ``torch.compile`` keeps it in one graph), in a few passes over the weight;
    ``binarize_weight_reference`` is the same rule as a detach trick on plain tensor ops, kept for the tests.

    The comparators' rules ``"xnornet"``, ``"bireal"``, ``"irnet"`` [code: their authors'] are ``sibnn.comparators``'s
    ``xnornet_weight``, ``bireal_weight`` and ``irnet_weight``; ``"irnet"`` reads its EDE t, k from ``ede`` (an
    ``EDESchedule``; the binary layer owns one).
    """
    if grad not in WEIGHT_GRADS:
        raise ValueError(f"unknown weight gradient {grad!r}; choose one of {', '.join(WEIGHT_GRADS)}")
    if grad in _OP_WEIGHT_GRADS:
        return torch.ops.sibnn.binarize_weight(w, grad)
    if grad == "xnornet":
        return comparators.xnornet_weight(w)
    if grad == "bireal":
        return comparators.bireal_weight(w)
    if ede is None:
        raise ValueError(f"weight rule {grad!r} needs the EDE schedule (t, k): pass ede=EDESchedule()")
    return comparators.irnet_weight(w, ede.t, ede.k)


def binarize_weight_reference(w: torch.Tensor, grad: str = "authors") -> torch.Tensor:
    """``binarize_weight`` as a detach trick on plain tensor ops (the forward value is exactly α·sign(W); every
    ``t − t.detach()`` term is exactly zero and only shapes the gradient). Slower; kept as the tests' reference.

    Surrogates: "ste" S = clamp(W); "authors" S = clamp(W)·(1 − 1/n) + sign(W)·mean_o |W| with sign(W) detached.
    One difference from the rule at W = 0 exactly: the α path here uses autograd's sgn(0) = 0 (the op uses +1).
    """
    if grad not in _OP_WEIGHT_GRADS:
        raise ValueError(f"unknown weight gradient {grad!r}; choose one of {', '.join(_OP_WEIGHT_GRADS)}")
    wc = w.clamp(-1.0, 1.0)
    dims = tuple(range(1, w.dim()))
    n = w[0].numel()
    ste = wc - wc.detach()  # exactly 0; its gradient is g·1[|W| ≤ 1]
    with torch.no_grad():
        alpha = torch.linalg.vector_norm(wc, 1, dims, keepdim=True) / n  # one fused pass: mean |W| per filter
    if grad == "ste":
        return torch.copysign(alpha.expand_as(wc), wc.detach() + 0.0) + ste
    m = torch.linalg.vector_norm(w, 1, dims, keepdim=True) / n
    wb = torch.copysign((alpha + (m - m.detach())).expand_as(wc), wc.detach() + 0.0)
    return torch.add(wb, ste, alpha=1.0 - 1.0 / n)


_OP_WEIGHT_GRADS = WEIGHT_GRADS[:2]  # the authors' rule and its STE ablation: the custom op computes these two


def _maybe(mask: torch.Tensor) -> bool:
    """Whether a rare case (|W| > 1, an all-zero filter) needs its extra passes: checked on CPU, where the check is
    cheap; on other devices always taken (no host sync, the extra passes are cheap there)."""
    return bool(mask.any()) if mask.device.type == "cpu" else True


def _within_unit(w: torch.Tensor) -> bool:
    """Every |W| ≤ 1 (one read pass; the engine keeps latent weights clamped, so this is the usual case)."""
    lo, hi = torch.aminmax(w)
    return bool(lo >= -1) and bool(hi <= 1)


def _dims(w: torch.Tensor) -> tuple:
    return tuple(range(1, w.dim()))


@torch.library.custom_op("sibnn::binarize_weight", mutates_args=())
def _binarize_weight_op(w: torch.Tensor, grad: str) -> torch.Tensor:
    """Forward: α = mean |clamp(W)| per output filter (one reduction), W_b = copysign(α, clamp(W) + 0) (one pass;
    "+ 0" turns −0.0 into +0.0 so sign(0) = +1)."""
    n = w[0].numel()
    wc = w.clamp(-1.0, 1.0).add_(0.0)
    alpha = torch.linalg.vector_norm(wc, 1, _dims(w), keepdim=True).div_(n)
    return torch.copysign(alpha.expand_as(wc), wc, out=wc)


@_binarize_weight_op.register_fake
def _(w, grad):
    return torch.empty_like(w)


@torch.library.custom_op("sibnn::binarize_weight_backward", mutates_args=())
def _binarize_weight_backward_op(g: torch.Tensor, w: torch.Tensor, wb: torch.Tensor, grad: str) -> torch.Tensor:
    """∂L/∂W from g = ∂L/∂W_b, the latent W and the forward output W_b = ±α (whose sign bit is sign(W), +0 for 0).

    authors: sign(W)·mean_o(sign(W) ⊙ g) = W_b · Σ_o(g ⊙ W_b) / (α² n) where α > 0 (one dot product per filter, one
    multiply, one add); an all-zero filter (α = 0, every sign +1) gets mean_o(g). Then + (1 − 1/n)·g·1[|W| ≤ 1], in place.
    """
    outside = None
    if w.device.type != "cpu" or not _within_unit(w):
        outside = ~(w.abs() <= 1)  # also NaN, as 1[|W| ≤ 1] reads it
    gm = g if outside is None else g.masked_fill(outside, 0.0)
    if grad == "ste":
        return gm.clone() if gm is g else gm
    n = w[0].numel()
    dims = _dims(w)
    alpha = wb[(slice(None),) + (0,) * (wb.dim() - 1)].abs().view((-1,) + (1,) * (wb.dim() - 1))  # |W_b| = α
    # one full-size buffer for g ⊙ W_b and then the result: a fresh large tensor per layer and step costs page
    # faults on the CPU (it showed as most of the profile's aten::mul time)
    out = torch.mul(g, wb, out=torch.empty_like(wb))
    dot = out.sum(dims, keepdim=True)  # on CPU faster than bmm/vecdot per filter
    zero = alpha == 0
    r = dot.div_(alpha.square().mul_(n))
    if _maybe(zero):
        r = r.masked_fill(zero, 0.0)
    torch.mul(wb, r, out=out).add_(gm, alpha=1.0 - 1.0 / n)
    if _maybe(zero):
        out.add_(torch.where(zero, g.sum(dims, keepdim=True).div_(n), 0.0))
    return out


@_binarize_weight_backward_op.register_fake
def _(g, w, wb, grad):
    return torch.empty_like(g)


def _setup_context(ctx, inputs, output):
    w, grad = inputs
    ctx.grad = grad
    ctx.save_for_backward(w, output)


def _backward(ctx, g):
    w, wb = ctx.saved_tensors
    return torch.ops.sibnn.binarize_weight_backward(g, w, wb, ctx.grad), None


_binarize_weight_op.register_autograd(_backward, setup_context=_setup_context)


class SiBinarize(nn.Module):
    """Si-BNN activation binarizer: {0, +1} output, trainable per-channel threshold θ and inverse window s = 1/Δ.

    ``per_layer=True`` is the ablation with one θ and one s shared by the whole layer. ``fused=True`` computes the
    same function as ``si_binarize`` in one fused autograd op (``sibnn.fused``: Triton on CUDA, a few torch ops on
    CPU), bit-identical forward, gradients equal to float rounding; False runs the reference; None (default) the
    fused op on the CPU (its torch path is the faster one there) and on CUDA when Triton is there, the reference
    elsewhere (measured in docs/benchmarks.md).
    """

    fused: bool | None = None   # [choice] a faster kernel for the same rule; per instance or class-wide

    def __init__(self, channels: int, rho: float = RHO_DEFAULT, per_layer: bool = False):
        super().__init__()
        check_rho(rho)
        n = 1 if per_layer else channels
        self.channels = channels
        self.rho = float(rho)
        self.per_layer = per_layer
        self.theta = nn.Parameter(torch.zeros(n))
        self.scale = nn.Parameter(torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.per_layer and x.shape[1] != self.channels:
            raise ValueError(f"SiBinarize({self.channels}) got {x.shape[1]} channels")
        if self.fused is not False:
            from sibnn.fused import HAVE_TRITON, si_binarize_fused

            if self.fused or x.device.type == "cpu" or (x.is_cuda and HAVE_TRITON):
                return si_binarize_fused(x, self.theta, self.scale, self.rho)
        return si_binarize(x, self.theta, self.scale, self.rho)

    @property
    def delta(self) -> torch.Tensor:
        """Δ = 1/s, the window width in input units."""
        return 1.0 / self.scale.detach()

    def extra_repr(self) -> str:
        return f"{self.channels}, rho={self.rho}" + (", per_layer=True" if self.per_layer else "")


class SignBinarize(nn.Module):
    """sign-BNN activation binarizer ("BNN" in the paper's tables)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_binarize(x)


BINARIZERS = BINARIZER_NAMES  # the table is sibnn.catalog.BINARIZERS


def make_activation(binarizer: str, channels: int, rho: float = RHO_DEFAULT) -> nn.Module:
    """The input activation of a binary layer for each binarizer choice: Si-BNN, its per-layer ablation, sign, or
    ReLU for the full-precision baseline — interchangeable so tables compare like with like (METHOD.md §1) — and the
    comparators' binarizers of ``sibnn.comparators`` (XNOR-Net without K, Bi-Real, ReActNet RSign, IR-Net EDE)."""
    if binarizer == "sibnn":
        return SiBinarize(channels, rho)
    if binarizer == "sibnn_layer":
        return SiBinarize(channels, rho, per_layer=True)
    if binarizer == "sign":
        return SignBinarize()
    if binarizer == "fp":
        return nn.ReLU()
    if binarizer == "xnornet_nok":
        return comparators.XnorSign()
    if binarizer == "bireal":
        return comparators.ApproxSign()
    if binarizer == "rsign":
        return comparators.RSign(channels)
    if binarizer == "irnet":
        return comparators.EDESign()
    raise ValueError(f"unknown binarizer {binarizer!r}; choose one of {', '.join(BINARIZERS)}")


from sibnn import comparators  # noqa: E402  (at the end: comparators reads this module's helpers)
