"""The packed-model file: one file, no pickle.

    magic  b"SIBNNPK\\0" (8 bytes) | version uint32 | 0 uint32 | header length uint64 | header (UTF-8 JSON) |
    zero padding to a multiple of 64 | tensor data (each tensor 64-byte aligned, little-endian)

The header holds the model's ``config`` (the training checkpoint's: arch, binarizer, rho, num_classes,
in_channels[, input_size]), ``meta`` (how it was exported), the ``program`` (the list of ops that
``runtime.PackedModel`` interprets) and the ``tensors`` table {name: {dtype, shape, offset, nbytes}}. Packed bits
are int64 words holding uint64 bit patterns (bit j of word w = channel 64·w + j).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch

MAGIC = b"SIBNNPK\x00"
FORMAT_VERSION = 1
_DTYPES = {"float32": torch.float32, "int64": torch.int64, "int8": torch.int8}
_NP = {"float32": np.float32, "int64": np.int64, "int8": np.int8}
_ALIGN = 64


class PackedFormatError(ValueError):
    """A file that is not a packed Si-BNN model, or one of a version this code does not read."""


def _pad(n: int) -> int:
    return -n % _ALIGN


def save_packed(path, *, config: dict, meta: dict, program: list, tensors: dict[str, torch.Tensor]) -> int:
    """Write the file; returns its size in bytes."""
    table, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in _DTYPES:
            raise TypeError(f"tensor {name!r}: dtype {dtype} cannot be stored (use {', '.join(_DTYPES)})")
        arr = t.detach().contiguous().cpu().numpy()
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        table[name] = {"dtype": dtype, "shape": list(t.shape), "offset": offset, "nbytes": len(data)}
        blobs.append(data + b"\0" * _pad(len(data)))
        offset += len(data) + _pad(len(data))
    header = json.dumps({"format": "sibnn-packed", "version": FORMAT_VERSION, "config": config, "meta": meta,
                         "program": program, "tensors": table}, separators=(",", ":")).encode()
    head = MAGIC + struct.pack("<IIQ", FORMAT_VERSION, 0, len(header)) + header
    head += b"\0" * _pad(len(head))
    with open(path, "wb") as f:
        f.write(head)
        for b in blobs:
            f.write(b)
    return Path(path).stat().st_size


def load_packed(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a file written by ``save_packed``: (header, tensors). Raises PackedFormatError naming the problem."""
    raw = Path(path).read_bytes()
    if raw[:8] != MAGIC or len(raw) < 24:
        raise PackedFormatError(f"{path}: not a packed Si-BNN model (no {MAGIC[:7].decode()} header); "
                                "make one with `python -m sibnn.infer export CHECKPOINT --out FILE`")
    version, _, hlen = struct.unpack("<IIQ", raw[8:24])
    if version != FORMAT_VERSION:
        raise PackedFormatError(f"{path}: packed-model file version {version} is not supported (this sibnn reads "
                                f"version {FORMAT_VERSION}); re-export it from its checkpoint with this sibnn")
    header = json.loads(raw[24:24 + hlen])
    base = 24 + hlen + _pad(24 + hlen)
    tensors = {}
    for name, e in header["tensors"].items():
        start = base + e["offset"]
        arr = np.frombuffer(raw, dtype=np.dtype(_NP[e["dtype"]]).newbyteorder("<"), count=int(np.prod(e["shape"])),
                            offset=start)
        tensors[name] = torch.from_numpy(arr.astype(_NP[e["dtype"]])).reshape(e["shape"])
    return header, tensors
