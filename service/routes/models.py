"""/models: the architecture registry and each model's summary."""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from service import catalog
from service.deps import READ_AUTH
from service.problems import ProblemError
from service.schemas import ModelDetail, ModelList, problems

router = APIRouter(prefix="/models", tags=["models"], dependencies=[READ_AUTH])
Binarizer = Literal[catalog.BINARIZER_NAMES]


@router.get("", response_model=ModelList, response_model_exclude_unset=True, responses=problems(401, 422, 500))
def list_models(summary: Annotated[bool, Query(description="kept for compatibility: every model's summary totals "
                                                           "are always listed (precomputed)")] = False):
    """Every registered architecture with its summary totals (binary/FP params, MACs, size)."""
    out = [{**catalog.info(name), "summary_totals": catalog.summary(name)["totals"], "summary_url": f"/models/{name}"}
           for name in catalog.names()]
    return {"models": out}


@router.get("/{name}", response_model=ModelDetail, response_model_exclude_unset=True,
            responses=problems(401, 404, 422, 500))
def get_model(name: Annotated[str, Path(max_length=64)], binarizer: Binarizer = "sibnn"):
    """One architecture with its per-layer summary at the paper's input size."""
    try:
        info = catalog.info(name)
    except ValueError as e:
        raise ProblemError(404, str(e)) from None
    return {**info, "binarizer": binarizer, "summary": catalog.summary(name, binarizer)}
