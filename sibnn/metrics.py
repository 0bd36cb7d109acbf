"""Metrics: top-k accuracy, per-layer activation sparsity (the "sparsity" of the paper's title), θ/Δ statistics."""
from __future__ import annotations

import torch
from torch import nn

from sibnn.layers import binary_layers
from sibnn.quant import SiBinarize


@torch.no_grad()
def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[int]:
    """Number of samples whose label is among the k highest logits, for each k (k is capped at the class count)."""
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(target.view(-1, 1))
    return [int(hit[:, : min(k, maxk)].any(dim=1).sum()) for k in ks]


class SparsityMeter:
    """Fraction of zeros out of each binary layer's input binarizer, accumulated over whole passes.

    For Si-BNN that is the fraction of 0 codes; for the FP baseline the fraction of ReLU zeros; a sign binarizer
    never outputs 0, so its sparsity is 0 by construction. Use as a context manager around an evaluation pass
    (in eval mode, as the paper reports it).
    """

    def __init__(self, model: nn.Module):
        self.layers = [(name, layer.act) for name, layer in binary_layers(model)]
        self.zeros = {name: 0 for name, _ in self.layers}
        self.total = {name: 0 for name, _ in self.layers}
        self._handles = []

    def _hook(self, name):
        def hook(_module, _inputs, out):
            self.zeros[name] += int((out.detach() == 0).sum())
            self.total[name] += out.numel()
        return hook

    def __enter__(self):
        self._handles = [act.register_forward_hook(self._hook(name)) for name, act in self.layers]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []

    def per_layer(self) -> dict[str, float]:
        return {n: self.zeros[n] / self.total[n] for n in self.zeros if self.total[n]}

    def mean(self) -> float:
        """Zeros over all binary activations, every element weighted equally."""
        t = sum(self.total.values())
        return sum(self.zeros.values()) / t if t else 0.0

    def counts(self) -> torch.Tensor:
        """(zeros, total) per layer as one tensor, for summing across ranks."""
        return torch.tensor([[self.zeros[n], self.total[n]] for n, _ in self.layers], dtype=torch.float64)

    def load_counts(self, counts: torch.Tensor) -> None:
        for (n, _), (z, t) in zip(self.layers, counts.tolist()):
            self.zeros[n], self.total[n] = int(z), int(t)


@torch.no_grad()
def binarizer_stats(model: nn.Module) -> dict[str, float]:
    """Mean θ and mean Δ = 1/s over every Si-BNN binarizer (empty for sign and FP models)."""
    thetas, deltas = [], []
    for m in model.modules():
        if isinstance(m, SiBinarize):
            thetas.append(m.theta.detach().float().flatten())
            deltas.append(m.delta.float().flatten())
    if not thetas:
        return {}
    theta, delta = torch.cat(thetas), torch.cat(deltas)
    return {"theta_mean": float(theta.mean()), "theta_std": float(theta.std()) if theta.numel() > 1 else 0.0,
            "delta_mean": float(delta.mean()), "delta_std": float(delta.std()) if delta.numel() > 1 else 0.0}
