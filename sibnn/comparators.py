"""The paper's comparators, as their authors' published code computes them: activation binarizers and weight rules.

Each rule names the file and function of the authors' repository it follows; ``docs/fidelity.md`` (rows 22–31)
records where this module decides something the code leaves open. Like ``sibnn.quant``, every rule is a detach trick
on plain tensor ops (forward: the binary value; backward: the gradient of a surrogate that is exactly zero in value),
never a ``weight.data`` swap, so DDP, bf16 autocast and ``torch.compile`` work unchanged.

Activations (``sibnn.quant.make_activation`` builds them by binarizer name):

* ``xnornet_nok`` — XNOR-Net as jiecaoyu/XNOR-Net-PyTorch computes it (``*/models/*.py`` ``BinActive``): sign, the
  gradient passed where −1 < x < 1 (open: ``grad_input[input.ge(1)] = 0``, ``grad_input[input.le(-1)] = 0``). No
  activation scale K: ``CIFAR_10/models/nin.py`` ``BinActive`` returns mean |x| over channels but ``BinConv2d.forward``
  discards it, no k×k box filter exists anywhere in that code, and the AlexNet and LeNet versions do not compute it.
* ``bireal`` — Bi-Real's ApproxSign (liuzechun/Bi-Real-net ``pytorch_implementation/BiReal18_34/birealnet.py``
  ``BinaryActivation``): sign, gradient 2 + 2x on [−1, 0), 2 − 2x on [0, 1), 0 elsewhere.
* ``rsign`` — ReActNet's RSign (liuzechun/ReActNet ``resnet/2_step2/birealnet.py`` ``LearnableBias`` then
  ``BinaryActivation``): x + b with a learnable per-channel b (init 0), then ApproxSign.
* ``irnet`` — IR-Net's EDE (htqin/IR-Net ``*/modules/binaryfunction.py`` ``BinaryQuantize``): sign, gradient
  k·t·(1 − tanh²(t·x)), t and k annealed per epoch (``EDESchedule``).

Weight rules (``sibnn.quant.binarize_weight`` dispatches to them by the ``weight_grad`` name):

* ``xnornet`` — ``xnornet_weight``: jiecaoyu/XNOR-Net-PyTorch ``util.py`` ``BinOp.binarizeConvParams`` and
  ``BinOp.updateBinaryGradWeight``; the latent projection ``BinOp.meancenterConvParams`` + ``clampConvParams`` is
  ``xnornet_project_`` (run by ``sibnn.layers.clamp_latent_weights_``).
* ``bireal`` — ``bireal_weight``: ``HardBinaryConv.forward`` of Bi-Real's and ReActNet's ``birealnet.py`` (the same
  code in both); latent weights not clamped.
* ``irnet`` — ``irnet_weight``: Libra-PB with EDE, htqin/IR-Net ``*/ir_1w1a.py`` ``IRConv2d.forward``; latent
  weights not clamped.

Ties: every rule here maps 0 to +1 (``torch.sign`` in the authors' code gives 0) [choice], as ``sibnn.quant`` does.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from sibnn.quant import _compute_dtype, _per_channel, _sign

# IR-Net's EDE range: [code] CIFAR-10/VGG-Small/main.py and CIFAR-10/ResNet20/1w32a/trainer.py `T_min, T_max = 1e-1,
# 1e1` (the paper's values; CIFAR-10/ResNet20/1w1a/trainer.py alone uses T_min = 1e-3), and `IRConv2d.__init__`'s
# k = 10, t = 0.1 before the first epoch.
EDE_T_MIN, EDE_T_MAX = 0.1, 10.0


# -- activations ----------------------------------------------------------------------------------------------------

def _st(code: torch.Tensor, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """``code`` in value, gradient ``slope`` (detached) times the incoming gradient: code + (x − x)·slope."""
    return code + (x - x.detach()) * slope.detach()


def xnor_sign(x: torch.Tensor) -> torch.Tensor:
    """XNOR-Net-PyTorch ``BinActive``: forward sign(x) (0 → +1), backward g·1[−1 < x < 1] (the window is open)."""
    xc = x.to(_compute_dtype(x))
    return _st(_sign(xc), xc, (xc.abs() < 1).to(xc.dtype)).to(x.dtype)


def approx_sign(x: torch.Tensor) -> torch.Tensor:
    """Bi-Real ``BinaryActivation`` (ApproxSign): forward sign(x) (0 → +1); backward g·(2 − 2|x|) where |x| < 1, else 0
    (the derivative of the code's piecewise polynomial: 2 + 2x on [−1, 0), 2 − 2x on [0, 1))."""
    xc = x.to(_compute_dtype(x))
    a = xc.abs()
    return _st(_sign(xc), xc, torch.where(a < 1, 2 - 2 * a, 0.0)).to(x.dtype)


def rsign(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """ReActNet RSign: ApproxSign(x + b), b one learnable value per channel (``LearnableBias``: ``x + bias``). The sum
    is made in float32 at least, like Si-BNN's threshold (METHOD.md §4)."""
    return approx_sign(x.to(_compute_dtype(x)) + _per_channel(bias, x)).to(x.dtype)


def ede_sign(x: torch.Tensor, t: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """IR-Net ``BinaryQuantize``: forward sign(x) (0 → +1); backward k·t·(1 − tanh²(t·x))·g everywhere (no window),
    with k·t multiplied in the schedule's float32 first, as the code does (its k and t are float32 tensors)."""
    xc = x.to(_compute_dtype(x))
    slope = (k * t) * (1 - torch.tanh(xc * t) ** 2)
    return _st(_sign(xc), xc, slope).to(x.dtype)


def ede_values(epoch: int, epochs: int, t_min: float = EDE_T_MIN, t_max: float = EDE_T_MAX) -> tuple[float, float]:
    """(t, k) at 0-based ``epoch`` of ``epochs``, as IR-Net's training scripts set them at the start of each epoch
    ([code] ``CIFAR-10/VGG-Small/main.py`` ``Log_UP``: t = 10^(log10 T_min + (log10 T_max − log10 T_min)/E·epoch), in
    float32; k = 1/t where t < 1, else 1). Epoch E − 1 is the last: t never quite reaches T_max."""
    if epochs < 1 or not 0 <= epoch:
        raise ValueError(f"epoch must be >= 0 and epochs >= 1, got epoch={epoch}, epochs={epochs}")
    lo, hi = math.log(t_min) / math.log(10), math.log(t_max) / math.log(10)
    t = torch.tensor(math.pow(10, lo + (hi - lo) / epochs * epoch), dtype=torch.float32)
    k = 1 / t if t < 1 else torch.tensor(1.0, dtype=torch.float32)
    return float(t), float(k)


class EDESchedule(nn.Module):
    """IR-Net's EDE state t, k as (non-persistent, float32) buffers, updated in place by ``set_epoch_progress`` so a
    compiled graph keeps reading them. Starts at epoch 0's values (t = T_min = 0.1, k = 10: ``IRConv2d.__init__``)."""

    def __init__(self, t_min: float = EDE_T_MIN, t_max: float = EDE_T_MAX):
        super().__init__()
        self.t_min, self.t_max = float(t_min), float(t_max)
        t, k = ede_values(0, 1, t_min, t_max)
        self.register_buffer("t", torch.tensor(t, dtype=torch.float32), persistent=False)
        self.register_buffer("k", torch.tensor(k, dtype=torch.float32), persistent=False)

    @torch.no_grad()
    def set_epoch_progress(self, epoch: int, epochs: int) -> None:
        """Called at the start of every epoch (0-based ``epoch`` of ``epochs``), as IR-Net's scripts do."""
        t, k = ede_values(epoch, epochs, self.t_min, self.t_max)
        self.t.fill_(t)
        self.k.fill_(k)

    def extra_repr(self) -> str:
        return f"t={float(self.t):.4g}, k={float(self.k):.4g}"


class EDESign(EDESchedule):
    """IR-Net activation binarizer: sign forward, EDE backward with the per-epoch t, k."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ede_sign(x, self.t, self.k)


class XnorSign(nn.Module):
    """XNOR-Net-PyTorch's ``BinActive`` (no activation scale K: the code applies none)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return xnor_sign(x)


class ApproxSign(nn.Module):
    """Bi-Real's ApproxSign activation binarizer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return approx_sign(x)


class RSign(nn.Module):
    """ReActNet's RSign: a learnable per-channel shift ``bias`` (init 0; ReActNet's ``LearnableBias``, here one value
    per input feature before a linear layer too [choice]) added before ApproxSign."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"RSign({self.channels}) got {x.shape[1]} channels")
        return rsign(x, self.bias)

    def extra_repr(self) -> str:
        return str(self.channels)


def set_epoch_progress_(model: nn.Module, epoch: int, epochs: int) -> nn.Module:
    """Call ``set_epoch_progress(epoch, epochs)`` on every module of ``model`` that has one (IR-Net's EDE schedules
    of activations and weights); 0-based ``epoch``, at the start of each epoch."""
    for m in model.modules():
        hook = getattr(m, "set_epoch_progress", None)
        if callable(hook):
            hook(epoch, epochs)
    return model


# -- weights --------------------------------------------------------------------------------------------------------

def _dims(w: torch.Tensor) -> tuple:
    return tuple(range(1, w.dim()))


def xnornet_weight(w: torch.Tensor) -> torch.Tensor:
    """XNOR-Net-PyTorch's weights ([code] ``util.py`` ``BinOp.binarizeConvParams``, ``BinOp.updateBinaryGradWeight``;
    the same in ``CIFAR_10``, ``MNIST`` and ``ImageNet/networks``): W_b = α_o·sign(W), α_o = mean |W| over output
    filter o of the latent W as stored (``xnornet_project_`` keeps it centred and clamped, as the code does before
    every forward). With g = ∂L/∂W_b, n = elements of one filter, C = ``W.size(1)`` (input channels / features):

        ∂L/∂W = n·(1 − 1/C)·[α_o·g·1[|W| ≤ 1] + sign(W)·mean_o(sign(W) ⊙ g)]     (sign(0) = 0 here, as the code's)

    [choice] without the extra ×1e9 of ``ImageNet/networks/util.py`` only (under Adam a constant factor changes only
    the weight of ε and of L2 weight decay).
    Surrogate: S = c·(α·clamp(W) + sign(W)·mean_o|W|), α and sign detached, c = n·(1 − 1/C).
    """
    n = w[0].numel()
    c = n * (1.0 - 1.0 / w.shape[1])
    dims = _dims(w)
    m = w.abs().mean(dims, keepdim=True)
    alpha = m.detach()
    wd = w.detach()
    s = c * (alpha * w.clamp(-1.0, 1.0) + torch.sign(wd) * m)
    return alpha * _sign(wd) + (s - s.detach())


@torch.no_grad()
def xnornet_project_(w: torch.Tensor) -> torch.Tensor:
    """XNOR-Net-PyTorch's in-place latent-weight projection ([code] ``util.py`` ``BinOp.meancenterConvParams`` then
    ``BinOp.clampConvParams``): W ← clamp(W − mean over dim 1 (input channels, per output and kernel position), −1, 1).
    The code runs it before each forward (``binarization()``); here after each optimiser step, the same sequence
    except the run's first forward [choice]."""
    return w.sub_(w.mean(1, keepdim=True)).clamp_(-1.0, 1.0)


def bireal_weight(w: torch.Tensor) -> torch.Tensor:
    """Bi-Real / ReActNet ``HardBinaryConv.forward``: α_o = mean |W| per output channel of the unclamped latent W,
    detached; W_b = α_o·sign(W); gradient g·1[−1 ≤ W ≤ 1] (``clamp(W, −1, 1)`` straight through). Differs from the
    "ste" rule where |W| > 1: its latent weights are never clamped (the scripts have no clamp), so α sees them."""
    alpha = w.detach().abs().mean(_dims(w), keepdim=True)
    wc = w.clamp(-1.0, 1.0)
    return alpha * _sign(w.detach()) + (wc - wc.detach())


def irnet_weight(w: torch.Tensor, t: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """IR-Net Libra-PB weights ([code] ``ir_1w1a.py`` ``IRConv2d.forward``): per output filter, Ŵ = (W − mean)/std
    (unbiased std; autograd goes through both), s = 2^round(log2 mean |Ŵ|) (detached), W_b = s·sign(Ŵ) with the EDE
    backward k·t·(1 − tanh²(t·Ŵ)) on Ŵ (``BinaryQuantize``, the same t, k as the activations)."""
    o = w.shape[0]
    flat = w.reshape(o, -1)
    view = (o,) + (1,) * (w.dim() - 1)
    bw = w - flat.mean(-1).view(view)
    bw = bw / bw.reshape(o, -1).std(-1).view(view)
    with torch.no_grad():
        sw = torch.pow(2.0, (torch.log(bw.abs().reshape(o, -1).mean(-1)) / math.log(2)).round()).view(view)
    return ede_sign(bw, t, k) * sw
