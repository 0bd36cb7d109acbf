"""/tables: the paper's tables, reproduced numbers (mean ± std over seeds) next to the published ones."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.deps import READ_AUTH, CtxDep
from service.results import paper_comparison, rho_ablation
from service.schemas import PaperComparisonTable, RhoAblationTable, problems

router = APIRouter(prefix="/tables", tags=["tables"], dependencies=[READ_AUTH])
Filter = Annotated[list[str] | None, Query(description="only these experiments (repeatable); default: all",
                                           max_length=100)]


TABLE = problems(401, 422, 500, 503)


@router.get("/rho-ablation", response_model=RhoAblationTable, response_model_exclude_unset=True, responses=TABLE)
def rho_table(ctx: CtxDep, experiment_id: Filter = None):
    """AAAI Table 2's shape: Si-BNN top-1 against ρ, per dataset and architecture."""
    return ctx.mlflow_call(rho_ablation, experiment_id or None)


@router.get("/paper-comparison", response_model=PaperComparisonTable, response_model_exclude_unset=True,
            responses=TABLE)
def comparison_table(ctx: CtxDep, experiment_id: Filter = None):
    """Si-BNN vs sign-BNN vs full precision per architecture, with METHOD.md §5's numbers beside them."""
    return ctx.mlflow_call(paper_comparison, experiment_id or None)
