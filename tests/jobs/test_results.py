"""jobs.results: seed statistics, the stated test behind each verdict, and the claims, on made-up numbers whose answer
is known. scipy.stats' t-tests are the oracle for the intervals (jobs.results uses only the t quantile)."""
import math
import statistics

import pytest
from scipy import stats

from jobs import results
from jobs.results import compare, one_sample


def test_clear_win_holds_with_a_paired_interval_equal_to_scipys():
    a, b = {0: 95.0, 1: 96.0, 2: 95.5}, {0: 90.0, 1: 91.2, 2: 90.4}
    d = compare(a, b)
    ci = stats.ttest_rel(list(a.values()), list(b.values())).confidence_interval(0.95)
    assert d.test == "paired t" and (d.n_a, d.n_b) == (3, 3)
    assert d.low == pytest.approx(ci.low, abs=1e-9) and d.high == pytest.approx(ci.high, abs=1e-9)
    assert d.mean == pytest.approx((5.0 + 4.8 + 5.1) / 3) and d.verdict == "holds"


def test_clear_loss_does_not_hold():
    d = compare({0: 90.0, 1: 90.5, 2: 90.2}, {0: 94.0, 1: 94.4, 2: 94.1})
    assert d.high < 0 and d.verdict == "does not hold"


def test_overlap_is_not_resolved_and_says_how_many_seeds_would_resolve_it():
    # differences 0.5, 1.2, 0.3 (the shape of docs/demo.md's Si-BNN vs sign run): mean 0.67, sd 0.47, n 3
    a, b = {0: 94.4, 1: 94.8, 2: 93.9}, {0: 93.9, 1: 93.6, 2: 93.6}
    d = compare(a, b)
    assert d.low < 0 < d.high and d.verdict == "not resolved"
    diffs = [a[s] - b[s] for s in a]
    sd = statistics.stdev(diffs)

    def half(n):
        return stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)

    n = d.seeds_needed
    assert n == 5  # t(4) = 2.78: 2.78 × 0.47 / √5 = 0.58 < 0.67; t(3) = 3.18: 0.75 > 0.67
    assert half(n) < d.mean <= half(n - 1)
    assert "about 5 paired seeds" in results.seeds_phrase(d)


def test_one_seed_a_side_has_no_interval_and_is_not_resolved():
    d = compare({0: 95.0}, {0: 90.0})
    assert (d.low, d.high, d.test, d.seeds_needed) == (None, None, "none", None)
    assert d.verdict == "not resolved" and "≥ 2 per side" in results.seeds_phrase(d)


def test_different_seeds_use_welchs_interval_equal_to_scipys():
    a, b = {0: 95.0, 1: 96.0, 2: 95.5, 3: 95.2}, {5: 93.0, 6: 95.8, 7: 94.1}
    d = compare(a, b)
    ci = stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False).confidence_interval(0.95)
    assert d.test == "Welch t" and (d.n_a, d.n_b) == (4, 3)
    assert d.low == pytest.approx(ci.low, abs=1e-9) and d.high == pytest.approx(ci.high, abs=1e-9)


def test_one_sample_interval_against_a_threshold_equals_scipys():
    vals = [0.52, 0.55, 0.50]
    d = one_sample(vals, 0.45)
    ci = stats.ttest_1samp(vals, 0.45).confidence_interval(0.95)
    assert d.low == pytest.approx(ci.low - 0.45, abs=1e-12) and d.high == pytest.approx(ci.high - 0.45, abs=1e-12)
    assert d.verdict == "holds"
    assert one_sample([0.46, 0.30, 0.60], 0.45).verdict == "not resolved"
    assert one_sample([0.30, 0.31, 0.29], 0.45).verdict == "does not hold"


def test_a_zero_difference_is_never_resolved_by_more_seeds():
    d = compare({0: 1.0, 1: 2.0}, {0: 2.0, 1: 1.0})
    assert d.mean == 0 and d.seeds_needed is None and "no number of seeds" in results.seeds_phrase(d)


def test_the_spread_is_the_sample_standard_deviation_everywhere():
    assert results.seed_stats([1.0, 3.0]) == {"mean": 2.0, "std": 1.414}  # sample; the population sd would be 1.0
    assert results.seed_stats([5.0]) == {"mean": 5.0, "std": None}
    assert results.sample_std([1.0, 3.0]) == pytest.approx(math.sqrt(2))


def _row(binarizer, rho, seed, top1, sparsity=0.55, dataset="mnist5k"):
    return {"dataset": dataset, "arch": "mlp_small", "recipe": "aaai", "binarizer": binarizer, "rho": rho,
            "seed": seed, "state": "FINISHED", "epochs": 10, "final_top1": top1, "final_top5": 99.0,
            "best_top1": top1, "best_top5": 99.0, "sparsity": sparsity if binarizer == "sibnn" else 0.0,
            "experiment_id": "e1"}


def _sweep(top1: dict, seeds=(0, 1, 2)) -> list[dict]:
    return [_row(b, rho, s, acc[i]) for (b, rho), acc in top1.items() for i, s in enumerate(seeds)]


def test_claims_use_the_papers_rho_and_join_both_rho_comparisons():
    rows = _sweep({("sibnn", 0.0): [90.0, 90.4, 90.1], ("sibnn", 0.3): [93.0, 93.5, 93.2],
                   ("sibnn", 0.5): [99.0, 99.0, 99.1],  # better by mean, but the claim is judged at the paper's 0.3
                   ("sibnn", 1.0): [92.9, 93.6, 92.8], ("sign", None): [88.0, 88.3, 88.1]})
    comp = results.paper_comparison(rows)
    (beats,) = [c for c in comp["claims"] if c["claim"] == "Si-BNN beats sign-BNN"]
    assert beats["rho"] == 0.3 and beats["verdict"] == "holds" and beats["holds"] is True
    assert "[+" in beats["evidence"] and "paired t, 3 paired seeds" in beats["evidence"]
    assert comp["statistics"] == results.STATISTICS and "sample standard deviation" in comp["statistics"]
    (rho_claim,) = results.rho_ablation(rows)["claims"]
    # 0.3 beats 0 clearly but 1 only within the seeds' spread: one holds, one unresolved → not resolved
    assert [d["verdict"] for d in rho_claim["differences"]] == ["holds", "not resolved"]
    assert rho_claim["verdict"] == "not resolved" and rho_claim["holds"] is False
    assert rho_claim["to_resolve"].startswith("vs ρ = 1: ")


def test_rho_claim_does_not_hold_when_either_end_wins_and_the_chosen_rho_is_said():
    rows = _sweep({("sibnn", 0.0): [90.0, 90.4, 90.1], ("sibnn", 0.5): [93.0, 93.5, 93.2],
                   ("sibnn", 1.0): [95.0, 95.6, 95.1]})
    (claim,) = results.rho_ablation(rows)["claims"]
    assert claim["rho"] == 0.5 and claim["verdict"] == "does not hold"
    assert "chosen by its mean" in claim["evidence"]


def test_sparsity_claim_is_a_one_sample_interval_and_one_seed_is_not_resolved():
    rows = _sweep({("sibnn", 0.3): [93.0, 93.5, 93.2], ("sign", None): [92.0, 92.5, 92.2]})
    for r, z in zip(rows, (0.40, 0.56, 0.49)):
        r["sparsity"] = z
    (zeros,) = [c for c in results.paper_comparison(rows)["claims"] if "zero" in c["claim"]]
    assert zeros["verdict"] == "not resolved" and zeros["differences"][0]["test"] == "one-sample t"
    single = results.paper_comparison(_sweep({("sibnn", 0.3): [93.0], ("sign", None): [92.0]}, seeds=(0,)))
    assert {c["verdict"] for c in single["claims"]} == {"not resolved"}
    assert all("≥ 2" in c["to_resolve"] for c in single["claims"])


def test_unfinished_trials_are_left_out_of_the_tables():
    rows = _sweep({("sibnn", 0.3): [93.0, 93.5, 93.2]})
    rows[0]["state"] = "RUNNING"
    rows[1]["final_top1"] = None
    (r,) = results.paper_comparison(results.finished(rows))["rows"]
    assert r["n"] == 1 and r["seeds"] == [2] and not any(k.startswith("_") for k in r)
