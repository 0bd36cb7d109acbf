"""Readable pure-PyTorch reference for the packed kernels (the C kernels in ``csrc/bitkernels.c`` must match it).

Bits are packed 64 to a word along the last dimension, little-endian: bit j of word w is element 64·w + j; words
are stored as int64 (torch has no uint64 arithmetic), so a word with bit 63 set reads as a negative number.
The binary layers compute METHOD.md §2 literally: with a ∈ {0,1} and weight bits u = (w+1)/2,
a·w = 2·popcount(a AND u) − popcount(a); here both popcounts are exact float64 convolutions of the unpacked bits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_SHIFTS = torch.arange(64, dtype=torch.int64)


def words(n: int) -> int:
    """Number of 64-bit words that hold n bits."""
    return (n + 63) // 64


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """(..., L) bool/{0,1} → (..., ceil(L/64)) int64 words; the padding bits are 0."""
    L = bits.shape[-1]
    b = F.pad(bits.to(torch.int64), (0, 64 * words(L) - L))
    b = b.view(*bits.shape[:-1], words(L), 64)
    return (b << _SHIFTS).sum(-1)  # disjoint bits: the sum is a bitwise OR (bit 63 wraps to the sign, as wanted)


def unpack_bits(packed: torch.Tensor, L: int) -> torch.Tensor:
    """(..., Lw) int64 words → (..., L) uint8 {0,1}."""
    b = (packed.unsqueeze(-1) >> _SHIFTS) & 1
    return b.reshape(*packed.shape[:-1], -1)[..., :L].to(torch.uint8)


def threshold_pack(x: torch.Tensor, sign: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Binarize with a folded per-channel comparison, b = [sign·x ≥ T], and pack along the channels.

    x: (N, C, H, W) → (N, H, W, Cw) words, or (N, F) → (N, Fw); sign ∈ {±1} and T are (C,) or (F,)."""
    xl = x.permute(0, 2, 3, 1) if x.dim() == 4 else x
    return pack_bits(xl * sign >= T)


def binary_conv2d(packed: torch.Tensor, channels: int, weight_packed: torch.Tensor, kernel_size: int, stride: int,
                  padding: int) -> torch.Tensor:
    """packed (N, H, W, Cw) activations, weight_packed (Co, K, K, Cw) bits u → a·w as float32 (N, Co, Ho, Wo).
    Zero padding adds nothing to either popcount, so it is exact for {0,1} inputs."""
    a = unpack_bits(packed, channels).permute(0, 3, 1, 2).double()
    u = unpack_bits(weight_packed, channels).permute(0, 3, 1, 2).double()
    p = F.conv2d(a, u, stride=stride, padding=padding)                                 # popcount(a AND u)
    q = F.conv2d(a, torch.ones_like(u[:1]), stride=stride, padding=padding)            # popcount(a)
    return (2 * p - q).float()


def binary_linear(packed: torch.Tensor, features: int, weight_packed: torch.Tensor) -> torch.Tensor:
    """packed (N, Fw) activations, weight_packed (Co, Fw) bits u → a·w as float32 (N, Co)."""
    a = unpack_bits(packed, features).double()
    u = unpack_bits(weight_packed, features).double()
    return (2 * a @ u.T - a.sum(1, keepdim=True)).float()
