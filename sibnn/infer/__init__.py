"""Bit-packed Si-BNN inference on the CPU, bit-exact against the trained model in eval mode (issue 7).

    from sibnn.infer import export_model, PackedModel
    size = export_model(model_or_checkpoint, "model.sibnn", fp_dtype="int8")
    packed = PackedModel.load("model.sibnn")
    logits = packed(images)

``export`` folds every binarizer (θ, s and the BatchNorms before it) into a per-channel comparison and packs the
binary weights 64 to a word (``export.py``); ``runtime.PackedModel`` runs the program with AND + popcount kernels
(``kernels.py`` over ``csrc/bitkernels.c``), whose readable PyTorch twin is ``reference.py``. Command line:
``python -m sibnn.infer export|predict|bench``.
"""
from __future__ import annotations

import datetime

import torch
from torch import nn

from sibnn.infer.export import ExportError, export_program
from sibnn.infer.format import FORMAT_VERSION, PackedFormatError, load_packed, save_packed
from sibnn.infer.runtime import PackedModel

__all__ = ["ExportError", "binary_activations", "FORMAT_VERSION", "PackedFormatError", "PackedModel", "export_model", "load_checkpoint_model",
           "load_packed", "save_packed",
           "pack_model"]


def binary_activations(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The trained model's logits on ``x`` and every binarizer's output {binary layer name: {0,1} activations},
    what the packed model's ``return_bits`` is compared with."""
    from sibnn.quant import SiBinarize
    bits = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: bits.__setitem__(n.removesuffix(".act"), o.detach()))
             for n, m in model.named_modules() if isinstance(m, SiBinarize)]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return out, bits


def load_checkpoint_model(checkpoint) -> tuple[nn.Module, dict]:
    """(model in eval mode, config) from a checkpoint path or dict written by ``sibnn.train --save`` / the jobs
    (``sibnn.trial.model_from_checkpoint``)."""
    from sibnn.trial import CheckpointError, load_checkpoint, model_from_checkpoint
    try:
        ckpt = load_checkpoint(checkpoint)
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    return model_from_checkpoint(ckpt), dict(ckpt["config"])


def pack_model(model: nn.Module, config: dict | None = None, fp_dtype: str = "float32") -> PackedModel:
    """The packed model of a trained ``model`` (any registry arch with the sibnn binarizer), in memory."""
    program, tensors, layers = export_program(model, fp_dtype)
    meta = {"fp_dtype": fp_dtype, "binary_layers": layers, "exported": datetime.date.today().isoformat()}
    return PackedModel(program, tensors, dict(config or {}), meta)


def export_model(model_or_checkpoint, path, config: dict | None = None, fp_dtype: str = "float32") -> int:
    """Export a model (with ``config``) or a checkpoint (path or dict) to the packed file ``path``; returns its
    size in bytes."""
    if isinstance(model_or_checkpoint, nn.Module):
        model, cfg = model_or_checkpoint, config or {}
    else:
        model, cfg = load_checkpoint_model(model_or_checkpoint)
    return pack_model(model, cfg, fp_dtype).save(path)
