"""Fast kernels: ``csrc/bitkernels.c`` (binary layers) and ``csrc/fpkernels.c`` (the float ops between them,
wrapped by ``fpops.py``) compiled into one library on first use with gcc (-O3 -march=native -fopenmp) and called
through ctypes; the same signatures as ``reference.py``.

The shared object is cached under ``$SIBNN_CACHE`` (default ``~/.cache/sibnn``) keyed by the source, the flags and
this CPU's feature flags, so a cache shared between different machines never runs code built for another CPU
(that is the guard -march=native needs). ``SIBNN_INFER_PORTABLE=1`` builds without -march=native (scalar
popcount, no AVX-512); without gcc, or with ``SIBNN_INFER_BACKEND=reference``, the reference kernels run instead.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from sibnn.infer import reference

_SOURCES = [Path(__file__).with_name("csrc") / name for name in ("bitkernels.c", "fpkernels.c")]
_lib = None
_lib_error: str | None = None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return os.uname().machine


def _flags() -> list[str]:
    portable = os.environ.get("SIBNN_INFER_PORTABLE", "") not in ("", "0")
    return ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=c11"] + ([] if portable else ["-march=native"])


def _build() -> ctypes.CDLL:
    flags = _flags()
    key = hashlib.sha256(b"".join(src.read_bytes() for src in _SOURCES) + " ".join(flags).encode()
                         + _cpu_flags().encode()).hexdigest()[:16]
    cache = Path(os.environ.get("SIBNN_CACHE", Path.home() / ".cache" / "sibnn"))
    so = cache / f"bitkernels-{key}.so"
    if not so.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:  # build aside, then rename: safe under concurrency
            out = Path(tmp) / so.name
            cc = os.environ.get("CC", "gcc")
            subprocess.run([cc, *flags, "-o", str(out), *map(str, _SOURCES)], check=True, capture_output=True,
                           text=True)
            os.replace(out, so)
    lib = ctypes.CDLL(str(so))
    i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.sibnn_threshold_pack.argtypes = [ptr, i64, i64, ptr, ptr, ptr, c_int]
    lib.sibnn_bconv.argtypes = [ptr] + [i64] * 9 + [ptr, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, c_int]
    lib.sibnn_maxpool_affine.argtypes = [ptr, c_int] + [i64] * 12 + [ptr, ptr, ptr, ptr, c_int]
    lib.sibnn_linear_i8.argtypes = [ptr, i64, i64, ptr, i64, ptr, ptr, ptr, c_int]
    lib.sibnn_has_avx512.restype = c_int
    return lib


def library():
    """The compiled kernels, or None (with one warning) when they cannot be built here."""
    global _lib, _lib_error
    if _lib is None and _lib_error is None:
        if os.environ.get("SIBNN_INFER_BACKEND", "") == "reference":
            _lib_error = "SIBNN_INFER_BACKEND=reference"
        else:
            try:
                _lib = _build()
            except (OSError, subprocess.CalledProcessError) as e:
                detail = getattr(e, "stderr", "") or str(e)
                _lib_error = f"could not build {' + '.join(s.name for s in _SOURCES)}: {detail.strip()[:500]}"
                warnings.warn(f"sibnn.infer: {_lib_error}; using the (slow) PyTorch reference kernels")
    return _lib


def backend() -> str:
    lib = library()
    if lib is None:
        return "reference"
    return "c-avx512" if lib.sibnn_has_avx512() else "c-scalar"


def _threads() -> int:
    return torch.get_num_threads()


def threshold_pack(x: torch.Tensor, sign: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    lib = library()
    if lib is None:
        return reference.threshold_pack(x, sign, T)
    if x.dim() == 4:
        n, c, h, w = x.shape
        xl = x.permute(0, 2, 3, 1).contiguous()  # a no-op view for channels_last inputs
        out = torch.empty(n, h, w, reference.words(c), dtype=torch.int64)
        rows, L = n * h * w, c
    else:
        xl = x.contiguous()
        rows, L = x.shape
        out = torch.empty(rows, reference.words(L), dtype=torch.int64)
    xl = xl.float()
    lib.sibnn_threshold_pack(xl.data_ptr(), rows, L, sign.data_ptr(), T.data_ptr(), out.data_ptr(), _threads())
    return out


def block_weights(weight_packed: torch.Tensor) -> torch.Tensor:
    """(Co, ..., Lw) words → (ceil(Co/16), L, 16): 16 output channels side by side, zero filters as padding."""
    co = weight_packed.shape[0]
    w = weight_packed.reshape(co, -1)
    co_pad = -(-co // 16) * 16
    w = torch.cat([w, w.new_zeros(co_pad - co, w.shape[1])]) if co_pad != co else w
    return w.view(co_pad // 16, 16, -1).transpose(1, 2).contiguous()


_scratch = threading.local()  # per calling thread: one int64 buffer, grown as needed, the kernels' workspace


def _workspace(words: int) -> torch.Tensor:
    """A reused scratch buffer of at least ``words`` int64 (contents undefined: the kernels write before they read).
    Reusing it keeps large workspaces off malloc/mmap and their page faults; one per thread, so concurrent callers
    never share one."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < words:
        buf = _scratch.buf = torch.empty(max(words, 1024), dtype=torch.int64)
    return buf


def _bconv(x, n, h, w, cw, k, stride, padding, ho, wo, blocked, co, epilogue=None, pack=None, bits=None):
    """Direct binary convolution of packed (n, h, w, cw) words ``x`` (a linear layer is h = w = k = 1) with
    ``block_weights`` output → (n·ho·wo, co) float32, a view of a (rows, Co_pad) buffer. ``epilogue`` =
    (scale, shift, residual or None), scale/shift (Co_pad,) float32, residual (rows, Co_pad) float32.
    ``pack`` = (sign, T), (Co_pad,) float32 with Co_pad == co: also the packed bits [sign·out ≥ T] of the stored
    output, (rows, ceil(co/64)) int64 — returns (out, bits) then; ``bits``: that buffer (any shape of
    rows·ceil(co/64) contiguous int64), else a new one."""
    lib = library()
    if blocked.shape[1] != k * k * cw:
        raise ValueError(f"blocked weights have {blocked.shape[1]} words per filter, the input needs {k * k * cw}")
    x = x.contiguous()
    rows, co_pad = n * ho * wo, blocked.shape[0] * 16
    out = torch.empty(rows, co_pad, dtype=torch.float32)
    tsign = tT = None
    if pack is not None:
        if co != co_pad:
            raise ValueError("the fused threshold needs a multiple of 16 output channels")
        tsign, tT = pack
        if bits is None:
            bits = _bits_buffer((rows, reference.words(co)), co)
    else:
        bits = None
    scale = shift = res = None
    if epilogue is not None:
        scale, shift, res = epilogue
    work = _workspace((n * (h + 2 * padding) * (w + 2 * padding) * cw if padding > 0 else 0) + rows
                      + (rows + 1) // 2)  # bordered input, row offsets and popcounts
    lib.sibnn_bconv(x.data_ptr(), n, h, w, cw, k, stride, padding, ho, wo, blocked.data_ptr(), co_pad,
                    out.data_ptr(), scale.data_ptr() if scale is not None else None,
                    shift.data_ptr() if shift is not None else None, res.data_ptr() if res is not None else None,
                    tsign.data_ptr() if bits is not None else None, tT.data_ptr() if bits is not None else None,
                    bits.data_ptr() if bits is not None else None, work.data_ptr(), _threads())
    return (out[:, :co], bits) if bits is not None else out[:, :co]


def _bits_buffer(shape, co: int) -> torch.Tensor:
    """Room for packed bits of ``co`` channels: the kernel writes each 16-channel block's bits, so a partial last
    word's upper pieces must start as 0."""
    return (torch.empty if co % 64 == 0 else torch.zeros)(shape, dtype=torch.int64)


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous()


def _bgemm(A: torch.Tensor, rows: int, blocked: torch.Tensor, co: int, epilogue=None) -> torch.Tensor:
    """The first ``rows`` rows of packed A (≥ rows, L) times the blocked weights → (rows, co); ``epilogue`` as in
    ``_bconv``."""
    return _bconv(A[:rows], rows, 1, 1, A.shape[1], 1, 1, 0, 1, 1, blocked, co, epilogue)


def binary_conv2d(packed, channels, weight_packed, kernel_size, stride, padding, blocked=None, epilogue=None,
                  pack=None):
    """As ``reference.binary_conv2d``; returns (N, Co, Ho, Wo) in channels_last memory format. ``epilogue`` =
    (scale, shift, residual or None) fuses ``m·scale + shift (+ residual)`` per output channel (Co % 16 == 0).
    ``pack`` = (sign, T) fuses the next threshold too (Co % 16 == 0): returns (out, bits), bits (N, Ho, Wo, Cw)
    int64 equal to ``threshold_pack(out, sign, T)``, computed in the epilogue from the output tile in registers."""
    lib = library()
    if lib is None:
        out = reference.binary_conv2d(packed, channels, weight_packed, kernel_size, stride, padding)
        if epilogue is not None:
            scale, shift, res = epilogue
            out = (out.double() * scale.double().view(1, -1, 1, 1) + shift.double().view(1, -1, 1, 1)).float()
            out = out + res if res is not None else out
        out = out.contiguous(memory_format=torch.channels_last)
        return (out, reference.threshold_pack(out, *pack)) if pack is not None else out
    n, h, w, cw = packed.shape
    k = kernel_size
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    rows = n * ho * wo
    blocked = block_weights(weight_packed) if blocked is None else blocked
    co = weight_packed.shape[0]
    if pack is not None:
        if co % 16:
            raise ValueError("the fused threshold needs a multiple of 16 output channels")
        pack = (_f32(pack[0]), _f32(pack[1]))
        if pack[0].numel() != co or pack[1].numel() != co:
            raise ValueError(f"the fused threshold needs {co} signs and thresholds")
    if epilogue is not None:
        scale, shift, res = epilogue
        if co % 16:
            raise ValueError("the fused epilogue needs a multiple of 16 output channels")
        res = res.permute(0, 2, 3, 1).float().contiguous().view(rows, co) if res is not None else None
        epilogue = (scale.float().contiguous(), shift.float().contiguous(), res)
    if pack is not None:
        bits = _bits_buffer((n, ho, wo, reference.words(co)), co)
        m, bits = _bconv(packed, n, h, w, cw, k, stride, padding, ho, wo, blocked, co, epilogue, pack, bits)
        return m.reshape(n, ho, wo, co).permute(0, 3, 1, 2), bits
    m = _bconv(packed, n, h, w, cw, k, stride, padding, ho, wo, blocked, co, epilogue)
    return m.reshape(n, ho, wo, co).permute(0, 3, 1, 2)


def binary_linear(packed, features, weight_packed, blocked=None):
    lib = library()
    if lib is None:
        return reference.binary_linear(packed, features, weight_packed)
    blocked = block_weights(weight_packed) if blocked is None else blocked
    return _bgemm(packed, packed.shape[0], blocked, weight_packed.shape[0])
