"""The model registry with each model's summary (binary vs FP parameters, MACs, packed size), computed lazily.

A summary runs one forward pass at the paper's input size: milliseconds for digits_cnn, ~15 s for vgg_variant on
two cores, so each is computed on first request and cached for the life of the process.
"""
from __future__ import annotations

import threading

from sibnn.models import create_model, list_models, model_info

_lock = threading.Lock()
_cache: dict[tuple[str, str], dict] = {}


def info(name: str) -> dict:
    i = model_info(name)  # ValueError naming the choices for unknown names
    return {"name": i.name, "dataset": i.dataset, "input_size": i.input_size, "in_channels": i.in_channels,
            "num_classes": i.num_classes, "description": i.description}


def summary(name: str, binarizer: str = "sibnn") -> dict:
    from sibnn.summary import summarize

    i = model_info(name)
    key = (name, binarizer)
    with _lock:  # one forward pass at a time; the second caller finds it cached
        if key not in _cache:
            model = create_model(name, binarizer=binarizer)
            _cache[key] = summarize(model, (1, i.in_channels, i.input_size, i.input_size)).to_dict()
        return _cache[key]


def cached_totals(name: str, binarizer: str = "sibnn") -> dict | None:
    hit = _cache.get((name, binarizer))
    return hit["totals"] if hit else None


def names() -> list[str]:
    return list_models()
