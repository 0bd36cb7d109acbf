"""The API's answers as pydantic models: the routes declare them (``response_model=``) and ``console.client``
parses with them, so the OpenAPI page, the server and the client agree on one shape.

Each model matches what the routes return (``service.experiments.describe``, ``service.results``,
``service.catalog``, ``service.problems``); routes serialise with ``response_model_exclude_unset`` so a key the
route does not send is not added. Rows whose columns come from MLflow (results, trials) also allow extra keys, so a
new column reaches clients before the model names it. Plain pydantic: no torch, Ray or MLflow import (the client
and the CLI load this module).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# The MLflow UI's training view (runs and metrics); the API's links and the CLI's both open it.
ML_WORKFLOW = "?workflowType=machine_learning"


def ui_link(ui: str, route: str = "/experiments") -> str:
    """A link into the MLflow UI that opens the training (runs and metrics) view."""
    return f"{ui.rstrip('/')}/#{route}{ML_WORKFLOW}"


PROBLEM_JSON = "application/problem+json"
ExperimentStatus = Literal["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- problem details (RFC 9457) -----------------------------------------------------------------------------------

class FieldError(_Model):
    field: str = Field(description="where: a dotted body path (``grid.rho``), a query or header name, or ``body``")
    message: str


class Problem(_Open):
    """An error (4xx/5xx) as RFC 9457 problem details, media type ``application/problem+json``."""
    type: str = Field("about:blank", description="always about:blank: ``title`` is the status phrase")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str | None = Field(description="one readable sentence: what is wrong, naming the field or dependency")
    instance: str = Field(description="the request path")
    errors: list[FieldError] | None = Field(None, description="per field (validation errors only)")


PROBLEM_DESCRIPTIONS = {
    401: "no or wrong bearer token (writes always need SIBNN_API_TOKEN; reads when not open)",
    404: "no such experiment, attempt or model",
    409: "conflicts with the experiment's state, or the same Idempotency-Key is still in flight",
    413: "request body larger than SIBNN_MAX_BODY_BYTES",
    415: "a body without a JSON Content-Type",
    422: "invalid request: ``errors`` names each field",
    429: "too many active experiments (Retry-After)",
    500: "unexpected error; the service log has the details",
    503: "a dependency (Ray or MLflow) is unavailable: ``detail`` names it",
}


def problems(*codes: int) -> dict[int, dict]:
    """``responses=`` entries for these status codes, each ``application/problem+json`` with the Problem schema
    (``openapi_with_problems`` puts the schema into the document's components)."""
    return {c: {"description": PROBLEM_DESCRIPTIONS.get(c, "problem details"),
                "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}} for c in codes}


def openapi_with_problems(app) -> dict:
    """FastAPI's OpenAPI document plus the Problem schema that ``problems()`` refers to."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        components.update(schema.pop("$defs", {}))
        components["Problem"] = schema
        app.openapi_schema = doc
    return app.openapi_schema


# --- experiments --------------------------------------------------------------------------------------------------

class ExperimentLinks(_Model):
    self: str
    results: str
    logs: str


class GpuHours(_Model):
    """GPU-hours the trials are estimated to take (``jobs.estimate``): an order of magnitude from one measured
    anchor, not a promise."""
    per_trial_max: float = Field(description="the costliest trial's GPU-hours")
    total: float
    trials: dict[str, float] = Field(description="trial id → GPU-hours")
    assumes: str = Field(description="the device and the scaling the estimate assumes")


class Experiment(_Model):
    """One experiment as listed, created or cancelled."""
    id: str
    name: str
    status: ExperimentStatus
    reason: str | None = Field(description="why it failed or was cancelled")
    attempt: int = Field(description="current attempt (a Ray job per attempt)")
    ray_submission_id: str | None
    ray_job_status: str | None
    cancel_requested: bool
    n_trials: int
    created_at: str | None = Field(description="ISO 8601")
    started_at: str | None = Field(description="ISO 8601")
    finished_at: str | None = Field(description="ISO 8601")
    mlflow_experiment_id: str | None
    mlflow_url: str | None = Field(description="the MLflow UI's training view of this experiment")
    gpu_hours: GpuHours | None = Field(None, description="estimated GPU time; null where it cannot be estimated")
    links: ExperimentLinks


class Attempt(_Model):
    number: int
    ray_submission_id: str
    ray_status: str | None
    message: str | None
    submitted_at: str | None
    ended_at: str | None


class TrialStatus(_Open):
    """A trial of the grid: PENDING until its MLflow run exists; ``metrics`` are the latest values."""
    trial_id: str
    arch: str
    binarizer: str
    rho: float | None
    seed: int
    state: str
    epoch: int
    epochs: int
    metrics: dict[str, float]
    mlflow_run_id: str | None
    mlflow_url: str | None


class ExperimentDetail(Experiment):
    """``GET /experiments/{id}``: the experiment with its spec, attempts and trials."""
    spec: dict[str, Any] = Field(description="the ExperimentSpec as submitted (the POST body's schema)")
    attempts: list[Attempt]
    trials: list[TrialStatus] | None = Field(description="null when MLflow is unreachable (``trials_error`` says why)")
    trials_error: str | None


class ExperimentPage(_Model):
    items: list[Experiment]
    total: int
    limit: int
    offset: int
    next: str | None = Field(description="the next page's path, or null on the last page")


class ResultRow(_Open):
    """One trial's results (DESIGN.md "Results table"): metrics are null until logged."""
    trial_id: str | None
    arch: str | None
    binarizer: str | None
    rho: float | None
    seed: int | None
    state: str
    epochs: int
    final_top1: float | None
    final_top5: float | None
    best_top1: float | None
    best_top5: float | None
    sparsity: float | None
    theta_mean: float | None
    delta_mean: float | None
    wall_time_s: float | None
    images_per_s: float | None
    packed_bytes: float | None
    packed_file_bytes: float | None
    packed_latency_ms: float | None
    run_id: str
    best_checkpoint: str | None
    checkpoint_uri: str | None = Field(None, description="MLflow artifact URI of the best checkpoint")
    packed_uri: str | None = Field(None, description="MLflow artifact URI of the bit-packed model")
    model_uri: str | None = Field(None, description="MLflow model URI (best trial per arch and binarizer)")
    evaluation: str | None = Field(None, description="the crop top-1/top-5 were measured on, e.g. 'short side 256, "
                                                     "centre 224×224 crop'")
    mlflow_url: str | None


class Results(_Model):
    experiment_id: str
    status: ExperimentStatus
    rows: list[ResultRow]


# --- tables -------------------------------------------------------------------------------------------------------

class Stats(_Model):
    mean: float | None
    std: float | None = Field(description="sample standard deviation over seeds (n − 1); null with fewer than two")


class _TableRow(_Open):
    dataset: str | None
    arch: str | None
    binarizer: str | None
    rho: float | None
    seeds: list[int]
    n: int
    final_top1: Stats
    final_top5: Stats
    best_top1: Stats
    best_top5: Stats
    sparsity: Stats
    epochs: int
    experiments: list[str]
    evaluation: str | None = Field(None, description="the crop top-1/top-5 were measured on")


class RhoAblationRow(_TableRow):
    pass


Verdict = Literal["holds", "does not hold", "not resolved"]


class Difference(_Model):
    """One comparison a claim rests on (``jobs.results``): mean(claimed better) − mean(other) over seeds with its
    two-sided 95 % confidence interval."""
    versus: str = Field(description="what the claimed-better side is compared with")
    mean: float
    low: float | None = Field(description="null: fewer than two seeds on a side, no interval")
    high: float | None
    test: Literal["paired t", "Welch t", "one-sample t", "none"]
    n_a: int
    n_b: int
    seeds_needed: int | None = Field(description="seeds per side an interval of the observed spread would need to "
                                                 "exclude 0 at the observed difference (null: not computable)")
    note: str
    verdict: Verdict


class _Claim(_Model):
    dataset: str | None
    arch: str | None
    claim: str
    rho: float | None
    verdict: Verdict = Field(description="holds: the 95 % interval of every difference lies above 0; does not hold: "
                                         "one lies below 0; else not resolved")
    holds: bool = Field(description="verdict == 'holds'")
    evidence: str = Field(description="the numbers, each difference with its interval and test")
    differences: list[Difference]
    to_resolve: str = Field(description="for a claim not resolved: about how many seeds would resolve it")


class RhoClaim(_Claim):
    best_intermediate_rho: float = Field(description="the paper's 0.3 where it was run, else the best by mean")


class RhoAblationTable(_Model):
    table: Literal["rho-ablation"]
    rows: list[RhoAblationRow]
    paper_rho: float
    note: str
    statistics: str = Field(description="the spread convention and the test behind every verdict")
    claims: list[RhoClaim]


class ComparisonRow(_TableRow):
    recipe: str | None
    sparsity_meaning: str | None
    paper_top1: float | None
    paper_top5: float | None
    paper_top5_approx: bool | None
    paper_source: str | None


class ComparisonClaim(_Claim):
    recipe: str | None


class PaperComparisonTable(_Model):
    table: Literal["paper-comparison"]
    rows: list[ComparisonRow]
    note: str
    statistics: str = Field(description="the spread convention and the test behind every verdict")
    published_comparators: dict[str, dict[str, float]]
    claims: list[ComparisonClaim]


# --- models -------------------------------------------------------------------------------------------------------

class SummaryTotals(_Open):
    binary_params: int
    fp_params: int
    params: int
    binary_macs: int
    fp_macs: int
    packed_bytes: int
    journal_bytes: int
    fp32_bytes: int
    binary_layers: int
    fp_layers: int


class LayerRow(_Model):
    name: str
    kind: str
    output_shape: list[int]
    binary_params: int
    fp_params: int
    binary_macs: int
    fp_macs: int


class ModelSummary(_Model):
    input_shape: list[int]
    rows: list[LayerRow]
    other_fp_params: int
    totals: SummaryTotals


class ModelInfo(_Model):
    name: str
    dataset: str
    input_size: int
    in_channels: int
    num_classes: int
    description: str


class ModelListItem(ModelInfo):
    summary_totals: SummaryTotals | None = Field(description="null until computed (``summary=true``)")
    summary_url: str


class ModelList(_Model):
    models: list[ModelListItem]


class ModelDetail(ModelInfo):
    binarizer: str
    summary: ModelSummary


# --- health -------------------------------------------------------------------------------------------------------

class Health(_Model):
    status: Literal["ok"]


class Check(_Model):
    ok: bool
    detail: str = Field(description="the dependency's address, or why it is not ready")
    ms: float


class Readiness(_Model):
    status: Literal["ready", "not ready"]
    checks: dict[str, Check]
