"""The paper's tables from real MLflow runs laid out as the jobs write them (jobs/tracking.py)."""
import time
import uuid

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


@pytest.fixture
def sweep(servers):
    c = tracking.client(servers.mlflow.url)
    exp_id = uuid.uuid4().hex[:12]
    spec = preset("digits", recipe={"epochs": 1})  # sibnn ρ 0/0.3/1, sign, fp × seeds 0, 1
    top1 = {}
    for seed, bump in ((0, 0.0), (1, 2.0)):
        top1 |= {("sibnn", 0.0, seed): 80 + bump, ("sibnn", 0.3, seed): 90 + bump, ("sibnn", 1.0, seed): 85 + bump,
                 ("sign", None, seed): 70 + bump, ("fp", None, seed): 97 + bump}
    _log_sweep(c, exp_id, spec, top1)
    return c, exp_id


def test_rho_ablation_is_mean_and_std_over_seeds_per_rho(sweep):
    c, exp_id = sweep
    table = rho_ablation(c, [exp_id])
    rows = {r["rho"]: r for r in table["rows"]}
    assert sorted(rows) == [0.0, 0.3, 1.0]
    assert rows[0.3]["final_top1"] == {"mean": 91.0, "std": 1.414} and rows[0.3]["seeds"] == [0, 1]
    assert table["paper_rho"] == 0.3 and "no per-ρ values" in table["note"]
    assert table["claims"] == [{"dataset": "digits", "arch": "digits_cnn", "best_intermediate_rho": 0.3,
                                "claim": "an intermediate ρ beats ρ = 0 and ρ = 1", "holds": True,
                                "evidence": "top-1 ρ=0.3: 91.00 ± 1.41; ρ=0: 81.00 ± 1.41; ρ=1: 86.00 ± 1.41"}]


def test_paper_comparison_has_si_bnn_sign_and_fp_and_no_invented_paper_numbers(sweep):
    c, exp_id = sweep
    table = paper_comparison(c, [exp_id])
    by = {(r["binarizer"], r["rho"]): r for r in table["rows"]}
    assert by[("sign", None)]["final_top1"]["mean"] == 71.0 and by[("fp", None)]["final_top1"]["mean"] == 98.0
    assert all(r["paper_top1"] is None for r in table["rows"])  # the paper has no digits numbers
    claim = next(x for x in table["claims"] if x["claim"] == "Si-BNN beats sign-BNN")
    assert claim["holds"] is True and claim["rho"] == 0.3


def test_imagenet_si_bnn_rows_carry_the_papers_number(servers):
    c = tracking.client(servers.mlflow.url)
    exp_id = uuid.uuid4().hex[:12]
    spec = preset("imagenet-paper-comparison", root="/data/imagenet",
                  grid={"arch": ["resnet18"], "binarizer": ["sibnn", "sign"], "rho": [0.3], "seed": [0]})
    _log_sweep(c, exp_id, spec, {("sibnn", 0.3, 0): 58.0, ("sign", None, 0): 50.0})
    rows = {r["binarizer"]: r for r in paper_comparison(c, [exp_id])["rows"]}
    assert rows["sibnn"]["paper_top1"] == 59.7 and rows["sign"]["paper_top1"] is None


def test_table_endpoints_serve_all_experiments_or_a_filter(servers, sweep, tmp_path):
    _, exp_id = sweep
    with api_client(live_settings(servers, tmp_path), reconcile=False) as api:
        one = api.get("/tables/rho-ablation", params={"experiment_id": exp_id}).json()
        assert [r["experiments"] for r in one["rows"]] == [[exp_id]] * 3
        every = api.get("/tables/paper-comparison").json()
        assert any(exp_id in r["experiments"] for r in every["rows"])
