"""The packed model: interprets an exported program with the bit kernels (``kernels``) or the PyTorch reference
(``reference``). Float values travel as (N, C, H, W) tensors in channels_last memory, so a row of channels is
contiguous for the binarize-and-pack kernel; bits travel as (N, H, W, Cw) or (N, Fw) int64 words."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from sibnn.infer import kernels, reference
from sibnn.infer.format import FORMAT_VERSION, load_packed, save_packed


class PackedModel:
    def __init__(self, program: list, tensors: dict[str, torch.Tensor], config: dict, meta: dict,
                 backend: str = "auto"):
        if backend not in ("auto", "fast", "reference"):
            raise ValueError(f"backend must be auto, fast or reference, got {backend!r}")
        self.program, self.tensors, self.config, self.meta = program, tensors, config, meta
        self.backend = "reference" if backend == "reference" else "fast"
        self._ops = {op["name"]: op for op in program}
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

    # -- files ---------------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path, backend: str = "auto") -> "PackedModel":
        header, tensors = load_packed(path)
        return cls(header["program"], tensors, header["config"], header["meta"], backend)

    def save(self, path) -> int:
        return save_packed(path, config=self.config, meta=self.meta, program=self.program, tensors=self.tensors)

    @property
    def binary_layers(self) -> list[str]:
        return [op["layer"] for op in self.program if op["op"] == "threshold"]

    # -- inference -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, x: torch.Tensor, return_bits: bool = False, profile: dict | None = None):
        """Logits for a batch ``x``. ``return_bits``: also {binary layer: its {0,1} input activations}, shaped like
        the training model's (N, C, H, W) or (N, F). ``profile``: a dict that accumulates seconds per op name."""
        regs = {"x": x.float().contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x.float()}
        bits = {}
        skip = 0
        for i, op in enumerate(self.program):
            if skip:
                skip -= 1
                continue
            start = time.perf_counter() if profile is not None else 0.0
            name = op["name"]
            fused = self._fusable(i)
            if fused:
                out, skip = self._run_fused(op, self.program[i + 1], self.program[i + 2] if fused == 2 else None,
                                            regs), fused
                op = self.program[i + fused]  # the result lands where the last fused op puts it
            else:
                out = self._run(op, regs)
            regs[op["dst"]] = out
            if return_bits and op["op"] == "threshold":
                src = regs[op["src"]]
                L = src.shape[1]
                b = reference.unpack_bits(out, L)
                bits[op["layer"]] = b.permute(0, 3, 1, 2) if b.dim() == 4 else b
            if profile is not None:
                profile[name] = profile.get(name, 0.0) + time.perf_counter() - start
        return (regs["x"], bits) if return_bits else regs["x"]

    def _fusable(self, i: int) -> int:
        """How many ops after bconv ``i`` the kernel's epilogue can absorb: ``affine`` in place (1), then ``add``
        of a shortcut (2) — the ResNet unit's tail. Results equal to float rounding (one FMA instead of two ops)."""
        prog = self.program
        op = prog[i]
        if (self.backend != "fast" or op["op"] != "bconv" or op["out_channels"] % 16 or i + 1 >= len(prog)
                or kernels.library() is None):
            return 0
        nxt = prog[i + 1]
        if nxt["op"] != "affine" or nxt["src"] != op["dst"] or nxt["dst"] != op["dst"]:
            return 0
        if i + 2 < len(prog) and prog[i + 2]["op"] == "add" and prog[i + 2]["src"] == op["dst"] \
                and prog[i + 2]["dst"] == op["dst"]:
            return 2
        return 1

    def _run_fused(self, op: dict, affine: dict, add: dict | None, regs: dict) -> torch.Tensor:
        t = self.tensors
        res = regs[add["other"]] if add is not None else None
        return kernels.binary_conv2d(regs[op["src"]], op["in_channels"], t[op["weight"]], op["kernel"], op["stride"],
                                     op["padding"], self._blocked.get(op["name"]), (t[affine["a"]], t[affine["b"]], res))

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
