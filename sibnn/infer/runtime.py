"""The packed model: interprets an exported program with the bit kernels (``kernels``) or the PyTorch reference
(``reference``). Float values travel as (N, C, H, W) tensors in channels_last memory, so a row of channels is
contiguous for the binarize-and-pack kernel; bits travel as (N, H, W, Cw) or (N, Fw) int64 words."""
from __future__ import annotations

import functools
import os
import time

import torch
import torch.nn.functional as F

from sibnn.infer import fpops, kernels, reference
from sibnn.infer.format import FORMAT_VERSION, load_packed, save_packed


class PackedModel:
    """``backend``: ``fast`` (the C kernels, with the fusions below) or ``reference`` (op by op in PyTorch);
    ``auto`` = fast where the kernels build. ``int8_compute``: the arithmetic of int8-stored full-precision convs
    on the fast backend (``fpops.int8_compute``: bfloat16 where the CPU has it natively, else float32).

    The fast backend runs the program as fused steps, each equal to its ops up to float rounding: a conv with the
    max-pool and affine after it (ResNet's stem: pooling and the folded BatchNorm in one pass over the conv's
    output; for int8 weights the dequantisation scale and bias ride in that affine, since max-pooling commutes
    with a positive per-channel scale); a 1×1 conv as one matrix product (int8: scale, bias and the following
    affine folded into it); a max-pool with its affine; a binary conv with its affine and residual add (the
    GEMM's epilogue) — and, when the next threshold reads that result, the threshold too: the epilogue also packs
    the bits [sign·out ≥ T] from the output tile in registers, exactly the bits the separate threshold would give
    (the threshold moves up past ops in between that leave its input and output registers alone, such as the
    residual fork's copy or a downsampling shortcut); a global average pool as a mean; an int8 linear at
    batch ≤ 4 straight from the int8 weights. ``SIBNN_INFER_FUSE_THRESHOLD=0`` (read when the model is built)
    leaves the thresholds as steps of their own, for comparisons."""

    def __init__(self, program: list, tensors: dict[str, torch.Tensor], config: dict, meta: dict,
                 backend: str = "auto", int8_compute: str = "auto"):
        if backend not in ("auto", "fast", "reference"):
            raise ValueError(f"backend must be auto, fast or reference, got {backend!r}")
        self.program, self.tensors, self.config, self.meta = program, tensors, config, meta
        self.backend = "reference" if backend == "reference" else "fast"
        self.int8_compute = fpops.int8_compute(int8_compute)
        self._fuse_threshold = os.environ.get("SIBNN_INFER_FUSE_THRESHOLD", "1") not in ("0", "")
        self._fp = {}        # float32 weights of FP layers (dequantised once when stored as int8)
        self._blocked = {}   # binary weights re-laid out for the GEMM kernel
        for op in program:
            if op["op"] in ("conv", "linear"):
                if "weight_q" in op:
                    q, s = tensors[op["weight_q"]], tensors[op["weight_scale"]]
                    self._fp[op["name"]] = q.float() * s.view(-1, *([1] * (q.dim() - 1)))
                else:
                    self._fp[op["name"]] = tensors[op["weight"]]
            if op["op"] in ("bconv", "blinear") and self.backend == "fast" and kernels.library() is not None:
                self._blocked[op["name"]] = kernels.block_weights(tensors[op["weight"]])
        self._steps = self._compile()

    # -- files ---------------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path, backend: str = "auto", int8_compute: str = "auto") -> "PackedModel":
        header, tensors = load_packed(path)
        return cls(header["program"], tensors, header["config"], header["meta"], backend, int8_compute)

    def save(self, path) -> int:
        return save_packed(path, config=self.config, meta=self.meta, program=self.program, tensors=self.tensors)

    @property
    def binary_layers(self) -> list[str]:
        return [op["layer"] for op in self.program if op["op"] == "threshold"]

    # -- inference -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, x: torch.Tensor, return_bits: bool = False, profile: dict | None = None):
        """Logits for a batch ``x``. ``return_bits``: also {binary layer: its {0,1} input activations}, shaped like
        the training model's (N, C, H, W) or (N, F). ``profile``: a dict that accumulates seconds per step, keyed
        by the name of the step's first op."""
        regs = {"x": x.float().contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x.float()}
        bits = {}
        for name, fn, dst, thr in self._steps:
            start = time.perf_counter() if profile is not None else 0.0
            if type(dst) is str:
                regs[dst] = fn(regs)
            else:
                for d, v in zip(dst, fn(regs)):
                    regs[d] = v
            if return_bits and thr is not None:
                b = reference.unpack_bits(regs[thr["dst"]], regs[thr["src"]].shape[1])
                bits[thr["layer"]] = b.permute(0, 3, 1, 2) if b.dim() == 4 else b
            if profile is not None:
                profile[name] = profile.get(name, 0.0) + time.perf_counter() - start
        return (regs["x"], bits) if return_bits else regs["x"]

    def _compile(self) -> list[tuple]:
        """The program as steps (name, fn(regs) → value, destination register, threshold op or None); a step that
        also runs a threshold further down the program (``_hoistable``) has destinations (value register,
        threshold's register) and its fn returns (value, bits)."""
        fast = self.backend == "fast" and kernels.library() is not None
        steps, i, done = [], 0, set()  # done: thresholds already run inside an earlier step
        while i < len(self.program):
            if i in done:
                i += 1
                continue
            op = self.program[i]
            fused = self._fuse(i) if fast else None
            fn, n = fused if fused is not None else (functools.partial(self._run, op), 1)
            assert not done.intersection(range(i, i + n))
            dst, thr = self.program[i + n - 1]["dst"], op if op["op"] == "threshold" else None
            j = self._hoistable(i, n) if fast and op["op"] == "bconv" and n > 1 and self._fuse_threshold else None
            if j is not None:
                thr = self.program[j]
                fn, dst = functools.partial(self._run_fused, op, self.program[i + 1],
                                            self.program[i + 2] if n == 3 else None, thr), (dst, thr["dst"])
                done.add(j)
            steps.append((op["name"], fn, dst, thr))
            i += n
        return steps

    def _hoistable(self, i: int, n: int) -> int | None:
        """The index of a threshold that can run in the epilogue of the fused bconv step covering ops i .. i+n−1,
        or None: the first threshold after the step that reads the step's result register X, where every op in
        between neither writes X, nor reads or writes the threshold's register, nor is a threshold itself (so
        moving the threshold up changes no value any op sees, and bits stay in program order)."""
        prog = self.program
        x = prog[i + n - 1]["dst"]
        if prog[i]["out_channels"] % 16:
            return None
        j = next((j for j in range(i + n, len(prog)) if prog[j]["op"] == "threshold"), None)
        if j is None or prog[j]["src"] != x or prog[j]["dst"] == x:
            return None
        b = prog[j]["dst"]
        for op in prog[i + n:j]:
            if op["dst"] in (x, b) or b in (op.get("src"), op.get("other")):
                return None
        return j

    def _next(self, i: int, kind: str) -> dict | None:
        """Op i+1 if it is a ``kind`` working in place on op i's result (nothing else can read the value between)."""
        if i + 1 >= len(self.program):
            return None
        op, nxt = self.program[i], self.program[i + 1]
        ok = nxt["op"] == kind and nxt["src"] == op["dst"] and nxt["dst"] == op["dst"]
        return nxt if ok else None

    def _fuse(self, i: int):
        """(fn, number of ops it covers) for the fast step starting at op i, or None for the plain op."""
        op = self.program[i]
        kind = op["op"]
        if kind == "conv":
            pool = self._next(i, "maxpool")
            if pool is not None:
                aff = self._next(i + 1, "affine")
                return self._conv_pool(op, pool, aff), 3 if aff is not None else 2
            aff = self._next(i, "affine")
            return self._conv(op, aff), 2 if aff is not None else 1
        if kind == "maxpool":
            aff = self._next(i, "affine")
            t = self.tensors
            sign, a, b = t.get(op.get("sign")), *((t[aff["a"]], t[aff["b"]]) if aff else (None, None))
            src = op["src"]
            fn = lambda regs: fpops.maxpool_affine(regs[src], op["kernel"], op["stride"], op["padding"],  # noqa: E731
                                                   op["ceil_mode"], sign, a, b)
            return fn, 2 if aff is not None else 1
        if kind == "bconv":
            n = self._fusable(i)
            if n:
                affine, add = self.program[i + 1], self.program[i + 2] if n == 2 else None
                return functools.partial(self._run_fused, op, affine, add, None), n + 1
        if kind == "linear" and "weight_q" in op:
            t = self.tensors
            q, s, bias, wf, src = t[op["weight_q"]], t[op["weight_scale"]], t.get(op.get("bias")), \
                self._fp[op["name"]], op["src"]
            fn = lambda regs: (fpops.linear_i8(regs[src], q, s, bias) if regs[src].shape[0] <= 4  # noqa: E731
                               else F.linear(regs[src], wf, bias))
            return fn, 1
        if kind == "adaptive_avgpool" and list(op["output_size"]) == [1, 1]:
            src = op["src"]
            return (lambda regs: regs[src].mean((2, 3), keepdim=True)), 1
        return None

    def _conv_raw(self, op: dict):
        """(fn(x) → the conv of x with the stored weights, before any int8 scale and bias; scale or None; bias or
        None still to add). Float32 weights: the bias is inside the conv, as the model computes it."""
        t = self.tensors
        stride, padding, bias = op["stride"], op["padding"], t.get(op.get("bias"))
        if "weight_q" not in op:
            w = t[op["weight"]]
            return (lambda x: F.conv2d(x, w, bias, stride, padding)), None, None
        q, scale = t[op["weight_q"]], t[op["weight_scale"]]
        if self.int8_compute == "bfloat16":
            wq = q.to(torch.bfloat16)  # |q| ≤ 127: exact
            return (lambda x: F.conv2d(x.to(torch.bfloat16), wq, None, stride, padding)), scale, bias
        wq = q.float()
        return (lambda x: F.conv2d(x, wq, None, stride, padding)), scale, bias

    def _conv_pool(self, conv: dict, pool: dict, aff: dict | None):
        """conv → max-pool (per-channel sign) → affine: the pool runs on the raw conv output and one affine after
        it carries the int8 scale, the bias and the folded BatchNorm (s > 0 commutes with the max; a bias commutes
        with it too)."""
        t = self.tensors
        raw, scale, bias = self._conv_raw(conv)
        sign = t.get(pool.get("sign"))
        a, b = (t[aff["a"]], t[aff["b"]]) if aff is not None else (None, None)
        if scale is not None:
            a, b = _fold_affine(scale, bias, a, b)
        src = conv["src"]
        return lambda regs: fpops.maxpool_affine(raw(regs[src]), pool["kernel"], pool["stride"], pool["padding"],
                                                 pool["ceil_mode"], sign, a, b)

    def _conv(self, op: dict, aff: dict | None):
        """A conv (and the affine after it); 1×1 stride-1 convs as one matrix product over the pixels."""
        t = self.tensors
        src = op["src"]
        a, b = (t[aff["a"]], t[aff["b"]]) if aff is not None else (None, None)
        one = op["stride"] == [1, 1] and op["padding"] == [0, 0] and self._fp[op["name"]].shape[-2:] == (1, 1)
        if one:
            w = self._fp[op["name"]]
            co = w.shape[0]
            bias = t.get(op.get("bias"))
            if "weight_q" in op:   # scale (already in w), bias and affine fold into the matrix and one bias vector
                a_all, bt = _fold_affine(torch.ones(co), bias, a, b)
                wt = (w.view(co, -1) * a_all[:, None]).t().contiguous()
                a = b = None
            else:
                wt, bt = w.view(co, -1).t().contiguous(), bias

            def fn(regs):
                x = regs[src]
                n, c, h, wd = x.shape
                xm = x.permute(0, 2, 3, 1).reshape(-1, c)
                y = torch.addmm(bt, xm, wt) if bt is not None else xm @ wt
                if a is not None:
                    y = torch.addcmul(b, y, a)
                return y.view(n, h, wd, co).permute(0, 3, 1, 2)
            return fn
        raw, scale, bias = self._conv_raw(op)
        if scale is not None:
            a, b = _fold_affine(scale, bias, a, b)
        a4, b4 = (a.view(1, -1, 1, 1), b.view(1, -1, 1, 1)) if a is not None else (None, None)

        def fn(regs):
            y = raw(regs[src])
            return torch.addcmul(b4, y.float(), a4) if a4 is not None else y
        return fn

    def _fusable(self, i: int) -> int:
        """How many ops after bconv ``i`` the kernel's epilogue can absorb: ``affine`` in place (1), then ``add``
        of a shortcut (2) — the ResNet unit's tail. Results equal to float rounding (one FMA instead of two ops)."""
        prog = self.program
        op = prog[i]
        if op["out_channels"] % 16 or self._next(i, "affine") is None:
            return 0
        return 2 if self._next(i + 1, "add") is not None else 1

    def _run_fused(self, op: dict, affine: dict, add: dict | None, thr: dict | None, regs: dict):
        t = self.tensors
        res = regs[add["other"]] if add is not None else None
        pack = (t[thr["sign"]], t[thr["T"]]) if thr is not None else None
        epilogue = (t[affine["a"]], t[affine["b"]], res)
        return kernels.binary_conv2d(regs[op["src"]], op["in_channels"], t[op["weight"]], op["kernel"], op["stride"],
                                     op["padding"], self._blocked.get(op["name"]), epilogue, pack)

    def _run(self, op: dict, regs: dict) -> torch.Tensor:
        x = regs[op["src"]]
        t = self.tensors
        kind = op["op"]
        fast = self.backend == "fast"
        if kind == "threshold":
            fn = kernels.threshold_pack if fast else reference.threshold_pack
            return fn(x, t[op["sign"]], t[op["T"]])
        if kind == "bconv":
            if fast:
                return kernels.binary_conv2d(x, op["in_channels"], t[op["weight"]], op["kernel"], op["stride"],
                                             op["padding"], self._blocked.get(op["name"]))
            return reference.binary_conv2d(x, op["in_channels"], t[op["weight"]], op["kernel"], op["stride"],
                                           op["padding"]).contiguous(memory_format=torch.channels_last)
        if kind == "blinear":
            if fast:
                return kernels.binary_linear(x, op["in_features"], t[op["weight"]], self._blocked.get(op["name"]))
            return reference.binary_linear(x, op["in_features"], t[op["weight"]])
        if kind == "affine":
            a, b = t[op["a"]], t[op["b"]]
            if x.dim() == 4:
                a, b = a.view(1, -1, 1, 1), b.view(1, -1, 1, 1)
            return torch.addcmul(b, x, a)
        if kind == "conv":
            return F.conv2d(x, self._fp[op["name"]], t.get(op.get("bias")), op["stride"], op["padding"])
        if kind == "linear":
            return F.linear(x, self._fp[op["name"]], t.get(op.get("bias")))
        if kind == "maxpool":
            sign = t[op["sign"]].view(1, -1, 1, 1) if op.get("sign") else None
            y = F.max_pool2d(x if sign is None else x * sign, op["kernel"], op["stride"], op["padding"],
                             ceil_mode=op["ceil_mode"])
            return y if sign is None else y * sign
        if kind == "avgpool":
            return F.avg_pool2d(x, op["kernel"], op["stride"], op["padding"], ceil_mode=op["ceil_mode"],
                                count_include_pad=op["count_include_pad"])
        if kind == "adaptive_avgpool":
            if tuple(x.shape[-2:]) == tuple(op["output_size"]):
                return x
            return F.adaptive_avg_pool2d(x, op["output_size"])
        if kind == "flatten":
            return torch.flatten(x, 1)
        if kind == "relu":
            return torch.relu(x)
        if kind == "add":
            return x + regs[op["other"]]
        if kind == "copy":
            return x
        raise ValueError(f"packed program op {kind!r} is unknown to this sibnn (file version {FORMAT_VERSION})")


def _fold_affine(scale: torch.Tensor, bias, a, b) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with A·y + B = a·(scale·y + bias) + b per channel: an int8 conv's raw output y, its dequantisation
    scale and bias, then the affine (a, b) that follows it (None: a = 1, b = 0; bias None: 0)."""
    a0 = a if a is not None else torch.ones_like(scale)
    b0 = b if b is not None else torch.zeros_like(scale)
    return (a0 * scale).contiguous(), (b0 + a0 * bias if bias is not None else b0).contiguous()


def median_latency(fn, x, repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of ``repeats`` calls of ``fn(x)`` without autograd, after ``warmup`` untimed calls (the first
    call builds or loads the kernels)."""
    import statistics
    import time

    with torch.no_grad():
        for _ in range(warmup):
            fn(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)
