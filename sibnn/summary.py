"""Model summary in the spirit of larq's: per layer, binary vs full-precision parameters and MACs, and the model's
size packed two ways: ``packed_bytes`` (1 bit per binary weight, 32 bits for everything else — what an fp32
deployment of the FP layers stores) and ``journal_bytes``, the TNNLS journal's storage convention (1 bit per binary
weight + 8 bits per full-precision parameter; its AlexNet ≈ 11.5 MB and ResNet-18 ≈ 2 MB, MB = 10⁶ bytes)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from sibnn.layers import BinaryConv2d, BinaryLayer, BinaryLinear


@dataclass
class LayerRow:
    name: str
    kind: str            # "binary conv" | "binary linear" | "fp conv" | "fp linear"
    output_shape: tuple
    binary_params: int
    fp_params: int
    binary_macs: int
    fp_macs: int


@dataclass
class ModelSummary:
    rows: list[LayerRow]
    other_fp_params: int             # BatchNorm, θ and s, biases: parameters outside conv/FC weights
    input_shape: tuple
    totals: dict = field(default_factory=dict)

    def __post_init__(self):
        binary = sum(r.binary_params for r in self.rows)
        fp = sum(r.fp_params for r in self.rows) + self.other_fp_params
        self.totals = {
            "binary_params": binary, "fp_params": fp, "params": binary + fp,
            "binary_macs": sum(r.binary_macs for r in self.rows), "fp_macs": sum(r.fp_macs for r in self.rows),
            "packed_bytes": (binary + 32 * fp) // 8 + ((binary + 32 * fp) % 8 > 0),
            "journal_bytes": (binary + 8 * fp) // 8 + ((binary + 8 * fp) % 8 > 0),
            "fp32_bytes": 4 * (binary + fp),
            "binary_layers": sum(r.kind.startswith("binary") for r in self.rows),
            "fp_layers": sum(r.kind.startswith("fp") for r in self.rows),
        }

    @property
    def compression(self) -> float:
        return self.totals["fp32_bytes"] / self.totals["packed_bytes"]

    def to_dict(self) -> dict:
        return {"input_shape": list(self.input_shape), "rows": [asdict(r) for r in self.rows],
                "other_fp_params": self.other_fp_params, "totals": self.totals}

    def __str__(self) -> str:
        head = f"{'layer':<34}{'kind':<15}{'output':<20}{'bin params':>12}{'fp params':>12}{'bin MACs':>14}{'fp MACs':>14}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r.name:<34}{r.kind:<15}{'x'.join(map(str, r.output_shape)):<20}{r.binary_params:>12,}"
                         f"{r.fp_params:>12,}{r.binary_macs:>14,}{r.fp_macs:>14,}")
        t = self.totals
        lines += ["-" * len(head),
                  f"{'other (BN, θ, s, biases)':<69}{'':>12}{self.other_fp_params:>12,}",
                  f"{'total':<69}{t['binary_params']:>12,}{t['fp_params']:>12,}{t['binary_macs']:>14,}"
                  f"{t['fp_macs']:>14,}",
                  f"binary layers: {t['binary_layers']}, full-precision layers: {t['fp_layers']}",
                  f"size packed: {t['packed_bytes'] / 2**20:.2f} MiB (1-bit binary weights) vs fp32 "
                  f"{t['fp32_bytes'] / 2**20:.2f} MiB ({self.compression:.1f}× smaller)",
                  f"journal convention (1 bit per binary weight, 8 bits per fp parameter): "
                  f"{t['journal_bytes'] / 1e6:.2f} MB vs fp32 {t['fp32_bytes'] / 1e6:.2f} MB"]
        return "\n".join(lines)


@torch.no_grad()
def summarize(model: nn.Module, input_shape: tuple) -> ModelSummary:
    """Run one forward pass of a zero batch of ``input_shape`` (N, C, H, W) to measure output shapes and MACs."""
    rows: list[LayerRow] = []
    handles = []
    weight_ids: set[int] = set()

    def hook(name, module):
        def fn(_m, _inp, out):
            n = out.shape[0]
            per_sample = out.numel() // n
            if isinstance(module, (BinaryConv2d, nn.Conv2d)):
                w = module.weight
                macs = per_sample * (w.shape[1] * w.shape[2] * w.shape[3])
                kind = "conv"
            else:
                macs = per_sample * module.weight.shape[1]
                kind = "linear"
            binary = isinstance(module, BinaryLayer) and module.binary_weight
            wn = module.weight.numel()
            rows.append(LayerRow(name, ("binary " if binary else "fp ") + kind, tuple(out.shape[1:]),
                                 wn if binary else 0, 0 if binary else wn, macs if binary else 0,
                                 0 if binary else macs))
        return fn

    for name, m in model.named_modules():
        if isinstance(m, (BinaryConv2d, BinaryLinear, nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(hook(name, m)))
            weight_ids.add(id(m.weight))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        model(torch.zeros(input_shape, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    other = sum(p.numel() for p in model.parameters() if id(p) not in weight_ids)
    return ModelSummary(rows, other, tuple(input_shape))
