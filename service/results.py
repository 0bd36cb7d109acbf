"""Trial status, results rows and the paper's tables, read from MLflow (layout: ``jobs/tracking.py``); the tables,
seed statistics and claims themselves are ``jobs.results``'s.

Everything here blocks on the MLflow REST API: call it from sync endpoints or worker threads.
"""
from __future__ import annotations

from mlflow.tracking import MlflowClient

from jobs import results, tracking
from jobs.spec import ExperimentSpec
from service.schemas import ui_link

# MLflow 3's UI (a hash router) shows its GenAI view unless the route carries the training workflow type; it reads
# ``workflowType`` from the query after the route (``#/experiments/1?workflowType=machine_learning``).


def run_link(ui: str, mlflow_experiment_id: str | None, run_id: str | None) -> str | None:
    if not mlflow_experiment_id or not run_id:
        return None
    return ui_link(ui, f"/experiments/{mlflow_experiment_id}/runs/{run_id}")


def experiment_link(ui: str, mlflow_experiment_id: str | None) -> str | None:
    return ui_link(ui, f"/experiments/{mlflow_experiment_id}") if mlflow_experiment_id else None


def _trial_runs(c: MlflowClient, experiment_id: str, mlflow_experiment_id: str | None):
    if mlflow_experiment_id is None:
        return tracking.trial_runs(c, experiment_id)
    # one call instead of two when the MLflow experiment id is known (the service stores it at submission)
    return c.search_runs([mlflow_experiment_id], filter_string=f"tags.`{tracking.TAG_ROLE}` = 'trial'",
                         max_results=5000)


def trial_status(c: MlflowClient, experiment_id: str, spec: ExperimentSpec, ui: str,
                 mlflow_experiment_id: str | None = None) -> list[dict]:
    """Per trial of the spec: state, epoch, latest metrics, MLflow link (trials without a run yet: PENDING)."""
    runs = {r.data.tags.get(tracking.TAG_TRIAL): r for r in _trial_runs(c, experiment_id, mlflow_experiment_id)}
    out = []
    for t in spec.trials():
        run = runs.get(t.trial_id)
        row = {"trial_id": t.trial_id, **t.params(), "state": "PENDING", "epoch": 0,
               "epochs": (t.recipe or spec.recipe).epochs,  # a teacher or a stage has its own recipe
               "metrics": {}, "mlflow_run_id": None, "mlflow_url": None}
        if run is not None:
            m = run.data.metrics
            row.update(state=run.data.tags.get(tracking.TAG_STATE, run.info.status),
                       epoch=int(m.get("epoch", 0)), mlflow_run_id=run.info.run_id,
                       mlflow_url=run_link(ui, run.info.experiment_id, run.info.run_id),
                       metrics={k: v for k, v in m.items() if "/" not in k})
        out.append(row)
    return out


def results_rows(c: MlflowClient, experiment_id: str, ui: str) -> list[dict]:
    rows = tracking.results(c, experiment_id)
    exp = c.get_experiment_by_name(tracking.experiment_name(experiment_id)) if rows else None
    for r in rows:
        r["mlflow_url"] = run_link(ui, exp.experiment_id if exp else None, r["run_id"])
    return rows


def _all_trial_runs(c: MlflowClient, experiment_ids: list[str] | None):
    """Trial runs of every ``sibnn-*`` MLflow experiment (or of the given service experiments)."""
    if experiment_ids:
        exps = [c.get_experiment_by_name(tracking.experiment_name(e)) for e in experiment_ids]
        exps = [e for e in exps if e is not None]
    else:
        exps, token = [], None
        while True:
            page = c.search_experiments(filter_string="name LIKE 'sibnn-%'", max_results=1000, page_token=token)
            exps += list(page)
            token = page.token
            if not token:
                break
    ids = [e.experiment_id for e in exps]
    runs, token = [], None
    for i in range(0, len(ids), 100):
        while True:
            page = c.search_runs(ids[i:i + 100], filter_string=f"tags.`{tracking.TAG_ROLE}` = 'trial'",
                                 max_results=5000, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                break
    return runs


def _finished(c: MlflowClient, experiment_ids: list[str] | None) -> list[dict]:
    return results.finished(tracking.table_row(r) for r in _all_trial_runs(c, experiment_ids))


def rho_ablation(c: MlflowClient, experiment_ids: list[str] | None = None) -> dict:
    """AAAI Table 2's shape and the ρ claim (``jobs.results.rho_ablation``) over the finished trial runs."""
    return results.rho_ablation(_finished(c, experiment_ids))


def paper_comparison(c: MlflowClient, experiment_ids: list[str] | None = None) -> dict:
    """Si-BNN vs sign-BNN vs FP and the claims (``jobs.results.paper_comparison``) over the finished trial runs."""
    return results.paper_comparison(_finished(c, experiment_ids))
