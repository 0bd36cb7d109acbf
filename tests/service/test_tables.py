"""The paper's tables from real MLflow runs laid out as the jobs write them (jobs/tracking.py)."""
import json
import re
import time
import uuid
from pathlib import Path

import pytest
from mlflow.entities import Metric

from jobs import tracking
from jobs.presets import preset
from service.results import paper_comparison, rho_ablation
from tests.service.conftest import api_client, live_settings

pytestmark = pytest.mark.slow


def _log_sweep(c, exp_id, spec, top1: dict, sparsity=0.6):
    """Finished trial runs with final metrics, as a completed job leaves them."""
    parent = tracking.ensure_parent_run(c, exp_id, spec)
    for t in spec.trials():
        run = tracking.ensure_trial_run(c, exp_id, parent, spec, t)
        acc = top1[(t.binarizer, t.rho, t.seed)]
        ts = int(time.time() * 1000)
        tracking.log_epoch(c, run, 1, {"epoch": 1, "val_top1": acc, "val_top5": 99.0, "sparsity_mean": sparsity})
        c.log_batch(run, metrics=[Metric(k, v, ts, 0) for k, v in
                                  {"final_val_top1": acc, "final_val_top5": 99.0, "best_val_top1": acc,
                                   "best_val_top5": 99.0, "wall_time_s": 3.0}.items()])
        tracking.set_trial_state(c, run, "FINISHED")


# per (binarizer, ρ): top-1 of seeds 0, 1, 2. ρ = 0.3 beats ρ = 0 and sign clearly, ρ = 1 only within the spread.
TOP1 = {("sibnn", 0.0): (80.0, 81.5, 80.6), ("sibnn", 0.3): (90.0, 92.0, 91.0), ("sibnn", 1.0): (89.0, 92.4, 90.1),
        ("sign", None): (70.0, 72.5, 70.4), ("fp", None): (97.0, 99.0, 98.0)}


@pytest.fixture
def sweep(servers):
    c = tracking.client(servers.mlflow.url)
    exp_id = uuid.uuid4().hex[:12]
    spec = preset("digits", recipe={"epochs": 1}, grid={"seed": [0, 1, 2]})  # sibnn ρ 0/0.3/1, sign, fp × 3 seeds
    _log_sweep(c, exp_id, spec, {(b, rho, seed): v[seed] for (b, rho), v in TOP1.items() for seed in range(3)})
    return c, exp_id, spec


def test_rho_ablation_is_mean_and_sample_std_over_seeds_per_rho(sweep):
    c, exp_id, _ = sweep
    table = rho_ablation(c, [exp_id])
    rows = {r["rho"]: r for r in table["rows"]}
    assert sorted(rows) == [0.0, 0.3, 1.0]
    assert rows[0.3]["final_top1"] == {"mean": 91.0, "std": 1.0} and rows[0.3]["seeds"] == [0, 1, 2]
    assert table["paper_rho"] == 0.3 and "no per-ρ values" in table["note"]
    assert "sample standard deviation" in table["statistics"]
    (claim,) = table["claims"]
    assert (claim["dataset"], claim["arch"], claim["rho"]) == ("digits", "digits_cnn", 0.3)
    # ρ 0.3 − ρ 0: differences 10, 10.5, 10.4 (paired t: holds); ρ 0.3 − ρ 1: 1, −0.4, 0.9 (not resolved)
    assert [(d["versus"], d["test"], d["verdict"]) for d in claim["differences"]] == [
        ("rho 0", "paired t", "holds"), ("rho 1", "paired t", "not resolved")]
    assert claim["verdict"] == "not resolved" and claim["holds"] is False
    assert "ρ=0.3 − ρ=0: +10.30 [" in claim["evidence"] and "paired seeds would resolve" in claim["to_resolve"]


def test_paper_comparison_has_si_bnn_sign_and_fp_and_no_invented_paper_numbers(sweep):
    c, exp_id, _ = sweep
    table = paper_comparison(c, [exp_id])
    by = {(r["binarizer"], r["rho"]): r for r in table["rows"]}
    assert by[("sign", None)]["final_top1"]["mean"] == 70.967 and by[("fp", None)]["final_top1"]["mean"] == 98.0
    assert all(r["paper_top1"] is None for r in table["rows"])  # the paper has no digits numbers
    claim = next(x for x in table["claims"] if x["claim"] == "Si-BNN beats sign-BNN")
    assert claim["verdict"] == "holds" and claim["holds"] is True and claim["rho"] == 0.3


def test_imagenet_si_bnn_rows_carry_the_papers_number(servers):
    c = tracking.client(servers.mlflow.url)
    exp_id = uuid.uuid4().hex[:12]
    spec = preset("imagenet-paper-comparison", root="/data/imagenet",
                  grid={"arch": ["resnet18"], "binarizer": ["sibnn", "sign"], "rho": [0.3], "seed": [0]})
    _log_sweep(c, exp_id, spec, {("sibnn", 0.3, 0): 58.0, ("sign", None, 0): 50.0})
    rows = {r["binarizer"]: r for r in paper_comparison(c, [exp_id])["rows"]}
    assert rows["sibnn"]["paper_top1"] == 59.7 and rows["sign"]["paper_top1"] is None


def test_table_endpoints_serve_all_experiments_or_a_filter(servers, sweep, tmp_path):
    _, exp_id, _ = sweep
    with api_client(live_settings(servers, tmp_path), reconcile=False) as api:
        one = api.get("/tables/rho-ablation", params={"experiment_id": exp_id}).json()
        assert [r["experiments"] for r in one["rows"]] == [[exp_id]] * 3
        every = api.get("/tables/paper-comparison").json()
        assert any(exp_id in r["experiments"] for r in every["rows"])


def test_the_api_the_cli_and_the_mlflow_report_give_the_same_claims_and_intervals(servers, sweep, tmp_path,
                                                                                   capsys, monkeypatch):
    """One verdict function (jobs.results) behind GET /tables, `sibnn table` (which prints the API's answer) and
    the end-of-sweep report's tables.json on the parent run."""
    c, exp_id, spec = sweep
    from rich.console import Console

    from jobs.report import log_sweep_report
    from console import cli

    monkeypatch.setattr(cli, "console", Console(width=600))  # one line per claim, no cell wraps an interval

    log_sweep_report(c, tracking.parent_run(c, exp_id).info.run_id, exp_id, spec, tracking.results(c, exp_id))
    local = c.download_artifacts(tracking.parent_run(c, exp_id).info.run_id, "tables.json", str(tmp_path))
    report = json.loads(Path(local).read_text())
    verdicts = set()
    with api_client(live_settings(servers, tmp_path), reconcile=False) as api:
        for name in ("paper-comparison", "rho-ablation"):
            answer = api.get(f"/tables/{name}", params={"experiment_id": exp_id}).json()
            assert answer["claims"] == report[name]["claims"] and answer["rows"] == report[name]["rows"]
            verdicts |= {c["verdict"] for c in answer["claims"]}
            cli._print_table(answer)
            out = capsys.readouterr().out
            for claim in answer["claims"]:
                verdict = claim["verdict"]
                for d in claim["differences"]:
                    if d["low"] is not None:
                        digits = 3 if d["test"] == "one-sample t" else 2
                        interval = f"[{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"
                        assert interval in out, (interval, out)
                assert re.search(rf"{re.escape(claim['claim'][:30])}.*│ {verdict} +│", out), (verdict, out)
    assert verdicts == {"holds", "not resolved"}
