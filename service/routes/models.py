"""/models: the architecture registry and each model's summary."""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from service import catalog
from service.problems import Problem

router = APIRouter(prefix="/models", tags=["models"])
Binarizer = Literal["sibnn", "sign", "fp", "sibnn_layer"]


@router.get("")
def list_models(summary: Annotated[bool, Query(description="compute every summary (slow the first time)")] = False):
    """Every registered architecture; with ``summary=true`` each one's totals (binary/FP params, MACs, size)."""
    out = []
    for name in catalog.names():
        totals = catalog.summary(name)["totals"] if summary else catalog.cached_totals(name)
        out.append({**catalog.info(name), "summary_totals": totals, "summary_url": f"/models/{name}"})
    return {"models": out}


@router.get("/{name}", responses={404: {"content": {"application/problem+json": {}}}})
def get_model(name: Annotated[str, Path(max_length=64)], binarizer: Binarizer = "sibnn"):
    """One architecture with its per-layer summary at the paper's input size."""
    try:
        info = catalog.info(name)
    except ValueError as e:
        raise Problem(404, str(e)) from None
    return {**info, "binarizer": binarizer, "summary": catalog.summary(name, binarizer)}
