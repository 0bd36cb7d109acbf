"""Export a trained Si-BNN model to a packed inference program (METHOD.md §1–§3).

What is folded, per binary layer (all in float64, then rounded once):

* its input binarizer b = 1[(z − θ)·s ≥ 0], where z = A·x + B is every per-channel affine since the last
  non-affine op (the BatchNorms before it; after a binary layer also α, so x is the integer a·w itself), becomes
  one comparison ``sign·x ≥ T``: with c = A·s and d = (B − θ)·s, b = 1[c·x + d ≥ 0], i.e. x ≥ −d/c (c > 0),
  −x ≥ d/c (c < 0), or a constant (c = 0, e.g. s = 0 or γ = 0). A negative γ or s only flips ``sign``. T is rounded
  *up* to float32, so for any float32 x (integers included) the comparison equals the real-arithmetic one;
* its weights become bits u = [α·sign(W) > 0] (sign(0) = +1, as ``binarize_weight``), 64 input channels to a word,
  one row of words per output channel; α stays in the pending affine and is folded into the next threshold or,
  where a float is needed (the ResNet residual stream, the classifier), into a per-channel ``affine`` op.
* max-pooling between a BatchNorm and a binarizer commutes with the per-channel affine only up to its direction:
  max(A·x + B) = A·max(x) + B for A > 0 and A·min(x) + B for A < 0, so the pool runs on the integers with a
  per-channel sign (min = −max(−x)), exactly. A BatchNorm *after* a max-pool (the HWGQ order of AlexNet and
  VGG-Variant, METHOD.md §3) needs no sign: the pool sees only α > 0 and the BN composes into the next threshold.

Full-precision layers (first conv, last FC, ResNet downsample 1×1) stay float32, or int8 per output channel with
``fp_dtype="int8"`` (smaller file; then the binary activations follow the quantised first layer, not the trained
one). ResNet downsample shortcuts run avgpool → conv1×1 → BN instead of conv1×1 → BN → avgpool: all three are
per-channel linear maps (the average's weights sum to 1), so the order only changes float rounding, and the 1×1
conv does 4× fewer MACs.

ReAct units (``resnet18_react``, ``digits_react``) keep RPReLU in full precision between units: its first shift is
applied to the float residual stream, PReLU runs as relu(y) + (−a)·relu(−y) (bit-identical, see ``_emit_rprelu``),
its second shift folds into the next threshold like a BatchNorm. The torchvision-layout ResNets (``resnet34``,
``digits_resnet``) pack like the Bi-Real ones, with one shortcut around each block's two binary convs.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from sibnn.infer import reference
from sibnn.layers import BinaryConv2d, BinaryLayer
from sibnn.quant import SiBinarize


class ExportError(ValueError):
    """A model the packed format cannot represent exactly, named by layer."""


def _bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    if bn.running_mean is None or bn.running_var is None:
        raise ExportError(f"{bn}: BatchNorm without running statistics cannot be folded")
    g = (bn.running_var.double() + bn.eps).rsqrt()
    if bn.weight is not None:
        g = g * bn.weight.detach().double()
    h = -bn.running_mean.double() * g
    if bn.bias is not None:
        h = h + bn.bias.detach().double()
    return g, h


def _round_up_f32(t: torch.Tensor) -> torch.Tensor:
    """The smallest float32 ≥ t (float64): for float32 x, x ≥ t ⇔ x ≥ _round_up_f32(t)."""
    f = t.float()
    low = f.double() < t
    f[low] = torch.nextafter(f[low], torch.full_like(f[low], math.inf))
    return f


def fold_threshold(A, B, theta, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """(sign, T) with 1[(A·x + B − θ)·s ≥ 0] = 1[sign·x ≥ T] for every float32 x (see the module docstring)."""
    c = A * scale
    d = (B - theta) * scale
    sign = torch.where(c < 0, -1.0, 1.0).double()
    with torch.no_grad():
        t = torch.where(c > 0, -d / c, d / c)
        t = torch.where(c == 0, torch.where(d >= 0, -math.inf, math.inf), t)
    return sign.float(), _round_up_f32(t)


def pack_binary_weight(layer: BinaryLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """(bits packed per output channel, α) of the binary weights ``layer`` computes in its forward pass (its own
    weight rule: α·sign(clamp(W)) for the authors' and the STE rule, the comparators' rules as theirs), read from
    ``quantized_weight`` itself; a rule whose weights are not ±α per output filter is refused, not packed wrongly.
    Conv: (Co, K, K, Cw) words (channels innermost, like the activations); linear: (Co, Fw)."""
    with torch.no_grad():
        wb = layer.quantized_weight().detach().float()
    co = wb.shape[0]
    alpha = wb.reshape(co, -1)[:, 0].abs().double()
    if not torch.equal(wb.reshape(co, -1).abs(), alpha.float()[:, None].expand(co, wb[0].numel())):
        raise ExportError(f"weight rule {layer.weight_grad!r} does not give ±α per output filter: not packable")
    u = wb > 0
    if u.dim() == 4:
        u = u.permute(0, 2, 3, 1)
    return reference.pack_bits(u), alpha


def _quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: w ≈ q·scale."""
    flat = w.reshape(w.shape[0], -1)
    scale = (flat.abs().amax(1) / 127.0).clamp_min(1e-12)
    q = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8).reshape(w.shape)
    return q, scale.float()


class _Emitter:
    """Walks the model's modules in forward order and emits ops on named registers ("x" is the running value).

    ``pending`` = (A, B): a per-channel affine not yet applied to register ``cur`` (float64). ``flat`` = the
    channel count when the pending affine is per channel but the value was flattened since (c-major features)."""

    def __init__(self, fp_dtype: str):
        self.ops: list[dict] = []
        self.tensors: dict[str, torch.Tensor] = {}
        self.fp_dtype = fp_dtype
        self.cur = "x"
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self.flat: int | None = None
        self.n_regs = 0
        self.binary_layers: list[str] = []

    # -- bookkeeping -------------------------------------------------------------------------------------------
    def tensor(self, name: str, t: torch.Tensor) -> str:
        key = name
        i = 1
        while key in self.tensors:
            key, i = f"{name}.{i}", i + 1
        self.tensors[key] = t.detach().contiguous()
        return key

    def emit(self, op: str, name: str, src: str | None = None, dst: str | None = None, **kw) -> None:
        self.ops.append({"op": op, "name": name, "src": src or self.cur, "dst": dst or self.cur, **kw})

    def new_reg(self, prefix: str) -> str:
        self.n_regs += 1
        return f"{prefix}{self.n_regs}"

    def _expand_flat(self, features: int) -> None:
        """Turn a per-channel pending affine into a per-feature one after Flatten (features are c-major)."""
        if self.pending is not None and self.flat is not None:
            A, B = self.pending
            if features % A.numel():
                raise ExportError(f"{features} features after Flatten do not split into {A.numel()} channels")
            rep = features // A.numel()
            self.pending = (A.repeat_interleave(rep), B.repeat_interleave(rep))
        self.flat = None

    def compose(self, g: torch.Tensor, h: torch.Tensor) -> None:
        if self.pending is None:
            self.pending = (g, h)
        else:
            A, B = self.pending
            self.pending = (g * A, g * B + h)

    def materialize(self, name: str, features: int | None = None, dst: str | None = None) -> str:
        """Apply the pending affine (emit ``affine``) into ``dst`` (default: in place); returns the register."""
        if self.pending is None:
            return self.cur
        if self.flat is not None:
            if features is None:
                raise ExportError(f"{name}: cannot apply a per-channel BatchNorm after Flatten here")
            self._expand_flat(features)
        A, B = self.pending
        out = dst or self.cur
        self.emit("affine", name, dst=out, a=self.tensor(f"{name}.a", A.float()), b=self.tensor(f"{name}.b", B.float()))
        if dst is None:
            self.pending = None
        return out

    def fork_float(self, name: str) -> str:
        """A register holding the current value as a float, leaving ``cur`` and its pending affine untouched."""
        reg = self.new_reg("fork")
        if self.pending is None:
            self.emit("copy", name, dst=reg)
            return reg
        return self.materialize(name, dst=reg)

    # -- modules -----------------------------------------------------------------------------------------------
    def fp_weight(self, name: str, m: nn.Module) -> dict:
        w = m.weight.detach().float()
        if self.fp_dtype == "int8":
            q, s = _quantize_int8(w)
            refs = {"weight_q": self.tensor(f"{name}.weight_q", q), "weight_scale": self.tensor(f"{name}.weight_scale", s)}
        else:
            refs = {"weight": self.tensor(f"{name}.weight", w)}
        if m.bias is not None:
            refs["bias"] = self.tensor(f"{name}.bias", m.bias.detach().float())
        return refs

    def module(self, name: str, m: nn.Module) -> None:
        if isinstance(m, BinaryLayer):
            return self.binary(name, m)
        if isinstance(m, (nn.Identity, nn.Dropout)):
            return None
        if isinstance(m, nn.Conv2d):
            if m.groups != 1 or m.dilation != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise ExportError(f"{name}: only plain convolutions (groups=1, dilation=1, zero padding) are supported")
            self.materialize(name + ".in")
            return self.emit("conv", name, stride=list(m.stride), padding=list(m.padding), **self.fp_weight(name, m))
        if isinstance(m, nn.Linear):
            self.materialize(name + ".in", features=m.in_features)
            return self.emit("linear", name, **self.fp_weight(name, m))
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if self.flat is not None:
                self._expand_flat(m.num_features)
            return self.compose(*_bn_affine(m))
        if isinstance(m, nn.MaxPool2d):
            if m.dilation not in (1, (1, 1)) or m.return_indices:
                raise ExportError(f"{name}: dilated max-pooling is not supported")
            sign = None
            if self.pending is not None and bool((self.pending[0] < 0).any()):
                sign = self.tensor(f"{name}.sign", torch.where(self.pending[0] < 0, -1.0, 1.0).float())
            return self.emit("maxpool", name, kernel=_pair(m.kernel_size), stride=_pair(m.stride or m.kernel_size),
                             padding=_pair(m.padding), ceil_mode=bool(m.ceil_mode), sign=sign)
        if isinstance(m, nn.AvgPool2d):
            # A per-channel affine commutes with an average whose weights sum to 1 (count_include_pad=False or no
            # padding); otherwise apply it first.
            if m.count_include_pad and m.padding not in (0, (0, 0)):
                self.materialize(name + ".in")
            return self.emit("avgpool", name, kernel=_pair(m.kernel_size), stride=_pair(m.stride or m.kernel_size),
                             padding=_pair(m.padding), ceil_mode=bool(m.ceil_mode),
                             count_include_pad=bool(m.count_include_pad))
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return self.emit("adaptive_avgpool", name, output_size=_pair(m.output_size))
        if isinstance(m, nn.Flatten):
            if (m.start_dim, m.end_dim) != (1, -1):
                raise ExportError(f"{name}: only Flatten(1, -1) is supported")
            if self.pending is not None:
                self.flat = self.pending[0].numel()
            return self.emit("flatten", name)
        if isinstance(m, nn.ReLU):
            self.materialize(name + ".in")
            return self.emit("relu", name)
        raise ExportError(f"{name}: module {type(m).__name__} is not supported by the packed exporter")

    def binary(self, name: str, m: BinaryLayer) -> None:
        if not isinstance(m.act, SiBinarize) or not m.binary_weight:
            kind = {"sign": "the sign (±1) binarizer", "fp": "full-precision ReLU activations"}.get(m.binarizer,
                                                                                                  m.binarizer)
            raise ExportError(f"{name}: packed inference needs Si-BNN {{0,1}} binarizers (binarizer='sibnn' or "
                              f"'sibnn_layer'); this layer uses {kind}")
        L = m.in_channels if isinstance(m, BinaryConv2d) else m.in_features
        if self.flat is not None:
            self._expand_flat(L)
        A, B = self.pending if self.pending is not None else (torch.ones(L, dtype=torch.float64),
                                                              torch.zeros(L, dtype=torch.float64))
        theta = m.act.theta.detach().double().expand(L)
        scale = m.act.scale.detach().double().expand(L)
        sign, T = fold_threshold(A.expand(L), B.expand(L), theta, scale)
        bits = self.new_reg("bits")
        self.emit("threshold", name + ".act", dst=bits, sign=self.tensor(f"{name}.act.sign", sign),
                  T=self.tensor(f"{name}.act.T", T), layer=name)
        self.binary_layers.append(name)
        wp, alpha = pack_binary_weight(m)
        w = self.tensor(f"{name}.weight_bits", wp)
        if isinstance(m, BinaryConv2d):
            self.emit("bconv", name, src=bits, weight=w, in_channels=m.in_channels, out_channels=m.out_channels,
                      kernel=m.kernel_size, stride=m.stride, padding=m.padding)
        else:
            self.emit("blinear", name, src=bits, weight=w, in_features=m.in_features, out_features=m.out_features)
        self.pending = (alpha, torch.zeros_like(alpha))

    def sequence(self, prefix: str, mods) -> None:
        for n, m in mods:
            full = f"{prefix}.{n}" if prefix else n
            if isinstance(m, nn.Sequential):
                self.sequence(full, m.named_children())
            else:
                self.module(full, m)


def _pair(v) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


# -- architectures ---------------------------------------------------------------------------------------------

def _emit_sequential(e: _Emitter, model: nn.Module) -> None:
    """Models whose forward is their children applied in order (AlexNet, VGG, MLP, VGG-small, digits CNN)."""
    e.sequence("", model.named_children())


def _emit_shortcut(e: _Emitter, name: str, sc: nn.Module, src: str) -> str | None:
    """A ResNet shortcut on float register ``src``; returns the register of its output (None: identity)."""
    if isinstance(sc, nn.Identity):
        return src
    saved = (e.cur, e.pending, e.flat)
    e.cur, e.pending, e.flat = e.new_reg("sc"), None, None
    e.emit("copy", name, src=src)
    mods = list(sc.named_children())
    pools = [(n, m) for n, m in mods if isinstance(m, nn.AvgPool2d)]
    convs = [m for _, m in mods if isinstance(m, nn.Conv2d)]
    if pools and all(c.kernel_size == (1, 1) and c.stride == (1, 1) and c.padding == (0, 0) for c in convs):
        mods = pools + [(n, m) for n, m in mods if not isinstance(m, nn.AvgPool2d)]  # see the module docstring
    for n, m in mods:
        e.module(f"{name}.{n}", m)
    e.materialize(name + ".out")
    out = e.cur
    e.cur, e.pending, e.flat = saved
    return out


def _emit_unit(e: _Emitter, name: str, unit: nn.Module) -> None:
    """Bi-Real unit: BN → binarize → binary conv → BN (+ shortcut of the unit's input)."""
    # The shortcut is emitted first so that conv → bn_out → add end the unit back to back (one fused step).
    sc = None
    if unit.shortcut is not None:
        sc = _emit_shortcut(e, name + ".shortcut", unit.shortcut, e.fork_float(name + ".input"))
    e.module(name + ".bn_in", unit.bn_in)
    e.module(name + ".conv", unit.conv)
    e.module(name + ".bn_out", unit.bn_out)
    if sc is not None:
        e.materialize(name + ".bn_out")
        e.emit("add", name + ".add", other=sc)


def _emit_resnet(e: _Emitter, model: nn.Module) -> None:
    from sibnn.models.resnet import BasicBlock, Bottleneck
    e.sequence("stem", model.stem.named_children())
    e.materialize("stem.out")
    for si, stage in enumerate(model.stages):
        for bi, block in enumerate(stage):
            name = f"stages.{si}.{bi}"
            if isinstance(block, BasicBlock):
                _emit_unit(e, name + ".unit1", block.unit1)
                _emit_unit(e, name + ".unit2", block.unit2)
            elif isinstance(block, Bottleneck):
                sc = _emit_shortcut(e, name + ".shortcut", block.shortcut, e.fork_float(name + ".input"))
                for u in ("unit1", "unit2", "unit3"):
                    _emit_unit(e, f"{name}.{u}", getattr(block, u))
                e.materialize(name + ".unit3.out")
                e.emit("add", name + ".add", other=sc)
            else:
                raise ExportError(f"{name}: unknown ResNet block {type(block).__name__}")
    e.sequence("head", model.head.named_children())
    e.materialize("head.out")


def _emit_rprelu(e: _Emitter, name: str, m: nn.Module) -> None:
    """ReActNet's RPReLU (``sibnn.models.react.RPReLU``) on the float residual stream: shift → PReLU → shift.

    The shifts are per-channel affines: the first is applied (x + b, as the model computes it), the second stays
    pending (it folds into the next unit's threshold and its shortcut fork). PReLU_a(y) is written with the ops
    the format has as relu(y) + (−a)·relu(−y): for y > 0 that is y + 0 = y, for y < 0 it is 0 + (−a)·(−y) = a·y,
    each the one float32 rounding the model's PReLU makes, so the result is bit-identical to it."""
    b_in = m.shift_in.bias.detach().double().flatten()
    e.compose(torch.ones_like(b_in), b_in)
    e.materialize(name + ".shift_in")
    c = b_in.numel()
    slope = m.prelu.weight.detach().float().flatten().expand(c)
    neg = e.new_reg("neg")
    e.emit("affine", name + ".neg", dst=neg, a=e.tensor(f"{name}.neg.a", -torch.ones(c)),
           b=e.tensor(f"{name}.neg.b", torch.zeros(c)))
    e.emit("relu", name + ".neg_relu", src=neg, dst=neg)
    e.emit("affine", name + ".slope", src=neg, dst=neg, a=e.tensor(f"{name}.slope.a", -slope),
           b=e.tensor(f"{name}.slope.b", torch.zeros(c)))
    e.emit("relu", name + ".relu")
    e.emit("add", name + ".prelu", other=neg)
    b_out = m.shift_out.bias.detach().double().flatten()
    e.compose(torch.ones_like(b_out), b_out)


def _emit_react(e: _Emitter, model: nn.Module) -> None:
    """ReAct units (``sibnn.models.react``): binarize → binary conv → BN → + shortcut → RPReLU, stem and head as
    their Sequentials."""
    e.sequence("stem", model.stem.named_children())
    e.materialize("stem.out")
    for si, stage in enumerate(model.stages):
        for ui, unit in enumerate(stage):
            name = f"stages.{si}.{ui}"
            sc = _emit_shortcut(e, name + ".shortcut", unit.shortcut, e.fork_float(name + ".input"))
            e.module(name + ".conv", unit.conv)
            e.module(name + ".bn", unit.bn)
            e.materialize(name + ".bn")
            e.emit("add", name + ".add", other=sc)
            _emit_rprelu(e, name + ".act", unit.act)
    e.sequence("head", model.head.named_children())
    e.materialize("head.out")


def _emit_standard_resnet(e: _Emitter, model: nn.Module) -> None:
    """torchvision-layout ResNet (``sibnn.models.standard_resnet``): conv1 → BN → (ReLU) → conv2 → BN → + shortcut
    (→ ReLU) per block; its ReLUs exist only in the full-precision model, which the binary check refuses anyway."""
    for n in ("conv1", "bn1", "relu", "maxpool"):
        e.module(n, getattr(model, n))
    e.materialize("stem.out")
    for si in range(model.num_stages):
        for bi, block in enumerate(getattr(model, f"layer{si + 1}")):
            name = f"layer{si + 1}.{bi}"
            sc = _emit_shortcut(e, name + ".downsample", block.downsample or nn.Identity(),
                                e.fork_float(name + ".input"))
            for n in ("conv1", "bn1", "conv2", "bn2"):
                e.module(f"{name}.{n}", getattr(block, n))
            e.materialize(name + ".bn2")
            e.emit("add", name + ".add", other=sc)
            e.module(name + ".relu", block.relu)
    e.module("avgpool", model.avgpool)
    e.module("flatten", nn.Flatten())
    e.module("fc", model.fc)


def _emitter_for(model: nn.Module):
    from sibnn.models.alexnet import AlexNet
    from sibnn.models.react import DigitsReAct, ReActResNet
    from sibnn.models.resnet import ResNet
    from sibnn.models.small import MLP, DigitsCNN, VGGSmall
    from sibnn.models.standard_resnet import StandardResNet
    from sibnn.models.vgg import VGGVariant
    if isinstance(model, ResNet):
        return _emit_resnet
    if isinstance(model, (ReActResNet, DigitsReAct)):
        return _emit_react
    if isinstance(model, StandardResNet):
        return _emit_standard_resnet
    if isinstance(model, (AlexNet, VGGVariant, VGGSmall, DigitsCNN, MLP)):
        return _emit_sequential
    raise ExportError(f"model {type(model).__name__} is not a registry architecture the exporter knows")


def export_program(model: nn.Module, fp_dtype: str = "float32") -> tuple[list, dict, list]:
    """(program, tensors, binary layer names) for ``model`` in eval mode (see the module docstring)."""
    from sibnn.engine import unwrap
    if fp_dtype not in ("float32", "int8"):
        raise ValueError(f"fp_dtype must be 'float32' or 'int8', got {fp_dtype!r}")
    model = unwrap(model)
    walk = _emitter_for(model)
    e = _Emitter(fp_dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            walk(e, model)
    finally:
        model.train(was_training)
    e.materialize("out")
    return e.ops, e.tensors, e.binary_layers
