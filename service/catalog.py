"""The model registry with each model's summary (binary vs FP parameters, MACs, packed size), as torch-free data.

The facts come from ``sibnn.catalog`` and the summaries from the file it reads (``sibnn/catalog.json``, written by
``python -m sibnn.models.summaries --write`` and checked current by the tests), so the API process builds no model
and imports no torch.
"""
from __future__ import annotations

from sibnn import catalog
from sibnn.catalog import BINARIZER_NAMES  # noqa: F401  (the binarizers /models/{name} accepts)


def info(name: str) -> dict:
    i = catalog.model_facts(name)  # ValueError naming the choices for unknown names
    return {"name": i.name, "dataset": i.dataset, "input_size": i.input_size, "in_channels": i.in_channels,
            "num_classes": i.num_classes, "description": i.description}


def summary(name: str, binarizer: str = "sibnn") -> dict:
    return catalog.summary(name, binarizer)


def names() -> list[str]:
    return catalog.model_names()
