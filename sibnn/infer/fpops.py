"""The float ops between binary layers, fast: ctypes wrappers over ``csrc/fpkernels.c`` (built with the bit
kernels, see ``kernels.py``) and the choice of arithmetic for int8-stored full-precision convolutions."""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from sibnn.infer import kernels


def pool_out(size: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """Output length of a pooling window, as PyTorch computes it (a ceil-mode window must start inside the input
    or the left padding)."""
    out = (size + 2 * p - k + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def maxpool_affine(x: torch.Tensor, kernel, stride, padding, ceil_mode: bool, sign=None, a=None, b=None):
    """``a · sign · max_pool(sign · x) + b`` per channel on an (N, C, H, W) channels_last float32 or bfloat16
    tensor; returns float32 channels_last. Falls back to PyTorch without the compiled kernels."""
    lib = kernels.library()
    n, c, h, w = x.shape
    if lib is None or x.dtype not in (torch.float32, torch.bfloat16):
        xs = x.float() if sign is None else x.float() * sign.view(1, -1, 1, 1)
        y = F.max_pool2d(xs, kernel, stride, padding, ceil_mode=ceil_mode)
        y = y if sign is None else y * sign.view(1, -1, 1, 1)
        return y if a is None else torch.addcmul(b.view(1, -1, 1, 1), y, a.view(1, -1, 1, 1))
    ho = pool_out(h, kernel[0], stride[0], padding[0], ceil_mode)
    wo = pool_out(w, kernel[1], stride[1], padding[1], ceil_mode)
    xl = x.permute(0, 2, 3, 1).contiguous()  # a view for channels_last inputs
    out = torch.empty(n, ho, wo, c, dtype=torch.float32)
    ptr = lambda t: t.data_ptr() if t is not None else None  # noqa: E731
    lib.sibnn_maxpool_affine(xl.data_ptr(), int(x.dtype == torch.bfloat16), n, h, w, c, kernel[0], kernel[1],
                             stride[0], stride[1], padding[0], padding[1], ho, wo, ptr(sign), ptr(a), ptr(b),
                             out.data_ptr(), torch.get_num_threads())
    return out.permute(0, 3, 1, 2)


def linear_i8(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias=None) -> torch.Tensor:
    """``x @ (q · scale)ᵀ + bias`` reading the int8 weights directly (small batches: memory-bound)."""
    lib = kernels.library()
    if lib is None:
        return F.linear(x, q.float() * scale[:, None], bias)
    x = x.float().contiguous()
    rows, k = x.shape
    out = torch.empty(rows, q.shape[0], dtype=torch.float32)
    lib.sibnn_linear_i8(x.data_ptr(), rows, k, q.data_ptr(), q.shape[0], scale.data_ptr(),
                        bias.data_ptr() if bias is not None else None, out.data_ptr(), torch.get_num_threads())
    return out


def bf16_available() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (AMX or AVX512-BF16; oneDNN uses them)."""
    cpu = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported())
    except AttributeError:
        return False


def int8_compute(requested: str = "auto") -> str:
    """The arithmetic of int8-stored full-precision convolutions: ``bfloat16`` (int8 weights are exact in bfloat16;
    inputs and outputs round to 8 significant bits, accumulation is float32) where the CPU has it natively, else
    ``float32`` (weights widened once, exact inputs). ``SIBNN_INFER_INT8_COMPUTE`` overrides ``auto``."""
    if requested == "auto":
        requested = os.environ.get("SIBNN_INFER_INT8_COMPUTE", "auto")
    if requested == "auto":
        return "bfloat16" if bf16_available() else "float32"
    if requested not in ("float32", "bfloat16"):
        raise ValueError(f"int8 compute must be auto, float32 or bfloat16, got {requested!r}")
    return requested


__all__ = ["bf16_available", "int8_compute", "linear_i8", "maxpool_affine", "pool_out"]
