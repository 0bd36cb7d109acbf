"""Seed statistics, the paper's tables and the paper's claims with a stated test: one module for every reader.

Plain data in, plain data out: rows are dicts of finished trials (``jobs.tracking.table_row``: dataset, arch, recipe,
binarizer, rho, seed, final_top1, ...). No torch, no MLflow, no web framework — the API (``service.results`` reads
the rows from MLflow and answers ``GET /tables/...``), the ``sibnn`` command (which prints the API's answer) and the
end-of-sweep MLflow report (``jobs.report``: ``tables.json``, the ρ plot's error bars) all call the functions here,
so a table, an interval and a verdict are computed once.

Statistics, said in every table (``STATISTICS``):

- a spread is the **sample** standard deviation over seeds (n − 1 in the denominator); none with one seed;
- a claim "A beats B" is judged on the difference of mean final top-1, d = mean(A) − mean(B), with its two-sided
  95 % confidence interval: a **paired t** interval on the per-seed differences when both sides ran the same seeds
  (the same seed gives the same initial weights, data order and test set on both sides), else **Welch's t**
  interval; at least two seeds per side are needed to measure a spread;
- verdict: ``holds`` when the whole interval is above 0, ``does not hold`` when it is below 0 (the opposite is
  shown), else ``not resolved`` — with the number of seeds per side that an interval of the observed spread would
  need to exclude 0 at the observed difference (``seeds_needed``);
- "an intermediate ρ beats ρ = 0 and ρ = 1" needs both comparisons to hold (an intersection-union test: its level
  is that of each comparison, 5 %); it does not hold when either does not hold; ρ is the paper's 0.3 where it was
  run (choosing the best ρ on the test set would favour the claim), else the intermediate ρ with the best mean,
  and the evidence then says it was chosen so;
- "about half or more of the activations are zero" is a one-sample t interval of the mean fraction of zeros
  against 0.45.

How a trial was trained beyond its binarizer — once from scratch, as the experiment's distillation teacher, as a
step of two-step training, distilled from a teacher (``method_of``: "", "teacher", "2-step", "KD", ...) — is a
column of its own: the tables keep such trials side by side, each row with a readable label (``trial_label``:
"Si-BNN · 2-step · KD"), and a claim compares trials trained the same way only. The paper's numbers are of
one-stage training from scratch: only those rows get the paper column.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Iterable, Literal

from scipy.special import stdtrit  # the t distribution's quantile function (scipy.stats.t.ppf without its import)

from sibnn.catalog import BINARIZER_NAMES, RHO_DEFAULT, binarizer_info, takes_rho

CONFIDENCE = 0.95
SPARSITY_THRESHOLD = 0.45  # "about half or more" (METHOD.md §5): a mean fraction of zeros at or above this
MAX_SEEDS_NEEDED = 1000    # above this, seeds_needed says "more than 1000"

Verdict = Literal["holds", "does not hold", "not resolved"]
HOLDS: Verdict = "holds"
FAILS: Verdict = "does not hold"
UNRESOLVED: Verdict = "not resolved"

STATISTICS = ("mean ± sample standard deviation over seeds (n − 1); a claim holds when the two-sided 95 % "
              "confidence interval of its difference of means lies above 0 and does not hold when it lies below 0, "
              "else it is not resolved: a paired t interval over seeds where both sides ran the same seeds, else "
              "Welch's t; ≥ 2 seeds per side")

# METHOD.md §5: ImageNet top-1 / top-5 (%) of Si-BNN as published. Keyed by (arch, recipe name). ``top5_approx``:
# the top-5 is read off a figure, not stated. The AAAI paper has no ResNet-50 number: 68.3 is the journal's, so it
# appears only under the journal recipe ("tnnls").
PAPER_SIBNN_IMAGENET = {
    ("alexnet", "aaai"): {"top1": 50.5, "top5": 75.0, "top5_approx": True,
                          "source": "AAAI abstract; top-5 read off the TNNLS figure"},
    ("resnet18", "aaai"): {"top1": 59.7, "top5": 82.0, "top5_approx": True,
                           "source": "AAAI abstract; top-5 read off the TNNLS figure"},
    ("resnet18", "tnnls"): {"top1": 62.2, "top5": 83.7, "top5_approx": False,
                            "source": "TNNLS abstract; authors' script README 62.166 / 83.682"},
    ("vgg_variant", "aaai"): {"top1": 63.2, "top5": None, "top5_approx": False, "source": "AAAI abstract"},
    ("resnet50", "tnnls"): {"top1": 68.3, "top5": None, "top5_approx": False,
                            "source": "TNNLS abstract (journal recipe; the AAAI paper has no ResNet-50 number)"},
}
# Published top-1 (%) of other binary networks, each from its own paper.
PUBLISHED_COMPARATORS = {
    "resnet18": {"XNOR-Net": 51.2, "Bi-Real": 56.4,
                 "ReActNet (two-step, distillation; its paper — 65.9 is its later README)": 65.5},
    "alexnet": {"XNOR-Net": 44.2},
}
# What the "sparsity" column measures, per binarizer: the binary code's zeros for Si-BNN (the paper's sparsity);
# for the FP baseline only the fraction of ReLU outputs that are zero, which is not the same quantity.
SPARSITY_MEANING = {name: binarizer_info(name).sparsity for name in BINARIZER_NAMES}
RHO_ABLATION_NOTE = ("AAAI Table 2 ablates ρ for AlexNet on ImageNet; METHOD.md records no per-ρ values, so no paper "
                     "column is shown. The paper's choice is ρ = 0.3; a reproduction sweeps ρ ∈ {0, 0.1, 0.3, 0.5, "
                     "0.75, 1}. Claims to check: an intermediate ρ beats ρ = 0 and ρ = 1.")
COMPARISON_NOTE = ("Paper numbers are ImageNet top-1/top-5 (%, single centre crop) from METHOD.md §5; they exist only "
                   "for Si-BNN on ImageNet. Other rows have no published counterpart.")


# --- how a trial was trained ---------------------------------------------------------------------------------------

def is_intermediate(row: dict) -> bool:
    """A stage of two-step training that is not the last one (it starts nothing from an earlier stage)."""
    return bool(row.get("stage")) and not row.get("init_trial")


def method_of(row: dict) -> str:
    """How a trial (a results row, or the same keys of a TrialSpec: role, stage, weights, teacher_trial, init_trial)
    was trained beyond its binarizer, in words: "" once from scratch, "teacher" the experiment's distillation
    teacher, "2-step" the last step of two-step training, "2-step, <stage> (<weights> weights)" an earlier step,
    each with " · KD" when distilled from the teacher."""
    if row.get("role") == "teacher":
        return "teacher"
    parts = []
    if row.get("stage"):
        parts.append(f"2-step, {row['stage']} ({row.get('weights') or 'binary'} weights)" if is_intermediate(row)
                     else "2-step")
    if row.get("teacher_trial"):
        parts.append("KD")
    return " · ".join(parts)


def trial_label(row: dict) -> str:
    """A row's readable name in the tables: the binarizer's label and how it was trained ("Si-BNN · 2-step · KD")."""
    b = row.get("binarizer")
    name = binarizer_info(b).label if b in BINARIZER_NAMES else str(b)
    how = method_of(row)
    return f"{name} · {how}" if how else name


# --- statistics -----------------------------------------------------------------------------------------------------

def t_quantile(df: float, p: float = 0.5 + CONFIDENCE / 2) -> float:
    return float(stdtrit(df, p))


def seed_stats(values: Iterable[float | None]) -> dict:
    """Mean and sample standard deviation (n − 1) over seeds, rounded for tables; std None below two values."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None}
    return {"mean": round(statistics.fmean(vals), 3),
            "std": round(statistics.stdev(vals), 3) if len(vals) > 1 else None}


def sample_std(values: list[float]) -> float:
    """The one spread convention, unrounded (the ρ plot's error bars): 0 for a single value."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class Difference:
    """mean(a) − mean(b) over seeds with its 95 % interval (``low``/``high`` None: not computable)."""

    mean: float
    low: float | None
    high: float | None
    test: str                    # "paired t", "Welch t", "one-sample t" or "none"
    n_a: int
    n_b: int
    seeds_needed: int | None     # per side, for an interval of the observed spread to exclude 0 at this difference
    note: str = ""

    @property
    def verdict(self) -> Verdict:
        if self.low is None or self.high is None:
            return UNRESOLVED
        if self.low > 0:
            return HOLDS
        if self.high < 0:
            return FAILS
        return UNRESOLVED

    def describe(self, digits: int = 2) -> str:
        f = f"{{:+.{digits}f}}"
        if self.low is None:
            return f"{f.format(self.mean)} ({self.note})"
        return (f"{f.format(self.mean)} [{f.format(self.low)}, {f.format(self.high)}] "
                f"({self.test}, {self._n()})")

    def _n(self) -> str:
        if self.test == "paired t":
            return f"{self.n_a} paired seeds"
        if self.test == "one-sample t":
            return f"{self.n_a} seeds"
        return f"{self.n_a} vs {self.n_b} seeds"

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


def _seeds_needed(d: float, width_at) -> int | None:
    """The smallest n ≥ 2 whose half-width ``width_at(n)`` is below |d|; None for d = 0 (no n resolves it)."""
    if d == 0:
        return None
    for n in range(2, MAX_SEEDS_NEEDED + 1):
        if width_at(n) < abs(d):
            return n
    return MAX_SEEDS_NEEDED + 1


def compare(a: dict[int, float], b: dict[int, float]) -> Difference:
    """mean(a) − mean(b) of two sides given as {seed: value}: paired t when both ran the same seeds (≥ 2), else
    Welch's t (≥ 2 per side), else no interval."""
    va, vb = list(a.values()), list(b.values())
    d = statistics.fmean(va) - statistics.fmean(vb)
    if len(a) >= 2 and set(a) == set(b):
        diffs = [a[s] - b[s] for s in sorted(a)]
        n, sd = len(diffs), statistics.stdev(diffs)
        half = t_quantile(n - 1) * sd / math.sqrt(n)
        need = _seeds_needed(d, lambda k: t_quantile(k - 1) * sd / math.sqrt(k))
        return Difference(d, d - half, d + half, "paired t", n, n, need)
    if len(va) >= 2 and len(vb) >= 2:
        sa, sb = statistics.variance(va), statistics.variance(vb)
        half = _welch_half_width(sa, sb, len(va), len(vb))
        need = _seeds_needed(d, lambda k: _welch_half_width(sa, sb, k, k))
        return Difference(d, d - half, d + half, "Welch t", len(va), len(vb), need)
    return Difference(d, None, None, "none", len(va), len(vb), None,
                      note=f"{len(va)} vs {len(vb)} seeds: ≥ 2 per side are needed to measure the spread")


def _welch_half_width(va: float, vb: float, na: int, nb: int) -> float:
    se2 = va / na + vb / nb
    if se2 == 0:
        return 0.0
    df = se2 ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    return t_quantile(df) * math.sqrt(se2)


def one_sample(values: list[float], against: float) -> Difference:
    """mean(values) − ``against`` with its one-sample t interval (≥ 2 values)."""
    d = statistics.fmean(values) - against
    n = len(values)
    if n < 2:
        return Difference(d, None, None, "none", n, 0, None,
                          note=f"{n} seed: ≥ 2 are needed to measure the spread")
    sd = statistics.stdev(values)
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return Difference(d, d - half, d + half, "one-sample t", n, 0,
                      _seeds_needed(d, lambda k: t_quantile(k - 1) * sd / math.sqrt(k)))


def seeds_phrase(diff: Difference) -> str:
    """What would resolve an unresolved difference, in words."""
    if diff.low is None:
        return diff.note
    if diff.seeds_needed is None:
        return "the observed difference is 0: no number of seeds resolves it"
    if diff.seeds_needed > MAX_SEEDS_NEEDED:
        return f"more than {MAX_SEEDS_NEEDED} seeds per side would be needed at this spread"
    per = "paired seeds" if diff.test == "paired t" else "seeds" if diff.test == "one-sample t" else "seeds per side"
    return f"about {diff.seeds_needed} {per} would resolve a difference of this size at this spread"


# --- tables ---------------------------------------------------------------------------------------------------------

def _aggregate(rows: list[dict], key) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[key(r)].append(r)
    out = []
    for k, g in groups.items():
        out.append({"key": k, "seeds": sorted(r["seed"] for r in g), "n": len(g), "label": trial_label(g[0]),
                    "final_top1": seed_stats(r["final_top1"] for r in g),
                    "final_top5": seed_stats(r["final_top5"] for r in g),
                    "best_top1": seed_stats(r["best_top1"] for r in g),
                    "best_top5": seed_stats(r["best_top5"] for r in g),
                    "sparsity": seed_stats(r["sparsity"] for r in g), "epochs": max(r["epochs"] for r in g),
                    "experiments": sorted({r["experiment_id"] for r in g if r.get("experiment_id")}),
                    # the crop its top-1 was measured on (sibnn.catalog.evaluation_protocol): printed with the table
                    "evaluation": "; ".join(sorted({r["evaluation"] for r in g if r.get("evaluation")})) or None,
                    # per seed, for the claims (not part of the table's answer)
                    "_top1": {r["seed"]: r["final_top1"] for r in g if r["final_top1"] is not None},
                    "_sparsity": [r["sparsity"] for r in g if r["sparsity"] is not None]})
    return out


def finished(rows: Iterable[dict]) -> list[dict]:
    return [r for r in rows if r.get("state") == "FINISHED" and r.get("final_top1") is not None]


def _rho_sort(r):
    return -1.0 if r is None else r


def _public(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def rho_ablation(rows: list[dict]) -> dict:
    """AAAI Table 2's shape: top-1 against ρ per (dataset, architecture), Si-BNN trials, mean ± std over seeds,
    and the ρ claim. ``rows``: finished trial rows (``finished``)."""
    rows = [r for r in rows if r["binarizer"] in BINARIZER_NAMES and takes_rho(r["binarizer"])]
    table = []
    for g in _aggregate(rows, lambda r: (r.get("dataset"), r["arch"], r["binarizer"], method_of(r), r["rho"])):
        dataset, arch, binarizer, method, rho = g.pop("key")
        table.append({"dataset": dataset, "arch": arch, "binarizer": binarizer, "method": method, "rho": rho, **g})
    table.sort(key=lambda r: (r["dataset"] or "", r["arch"] or "", r["binarizer"] or "", r["method"],
                              _rho_sort(r["rho"])))
    return {"table": "rho-ablation", "rows": _public(table), "paper_rho": RHO_DEFAULT, "note": RHO_ABLATION_NOTE,
            "statistics": STATISTICS, "claims": rho_claims(table)}


def paper_comparison(rows: list[dict]) -> dict:
    """The headline comparison: Si-BNN vs sign-BNN vs FP per architecture, the paper's number beside ours, and the
    claims. ``rows``: finished trial rows (``finished``)."""
    table = []
    for g in _aggregate(rows, lambda r: (r.get("dataset"), r["arch"], r.get("recipe"), r["binarizer"], method_of(r),
                                         r["rho"])):
        dataset, arch, recipe, binarizer, method, rho = g.pop("key")
        # the paper's numbers are of one-stage training from scratch
        paper = PAPER_SIBNN_IMAGENET.get((arch, recipe)) \
            if dataset == "imagenet" and binarizer == "sibnn" and not method else None
        table.append({"dataset": dataset, "arch": arch, "recipe": recipe, "binarizer": binarizer, "method": method,
                      "rho": rho, **g,
                      "sparsity_meaning": SPARSITY_MEANING.get(binarizer),
                      "paper_top1": paper["top1"] if paper else None, "paper_top5": paper["top5"] if paper else None,
                      "paper_top5_approx": paper["top5_approx"] if paper else None,
                      "paper_source": paper["source"] if paper else None})
    order = {b: i for i, b in enumerate(BINARIZER_NAMES)}
    table.sort(key=lambda r: (r["dataset"] or "", r["arch"] or "", r["recipe"] or "", r["method"],
                              order.get(r["binarizer"], 9), _rho_sort(r["rho"])))
    return {"table": "paper-comparison", "rows": _public(table), "note": COMPARISON_NOTE, "statistics": STATISTICS,
            "published_comparators": PUBLISHED_COMPARATORS, "claims": comparison_claims(table)}


# --- claims ---------------------------------------------------------------------------------------------------------

def _pm(s: dict, digits: int = 2) -> str:
    return f"{s['mean']:.{digits}f}" + (f" ± {s['std']:.{digits}f}" if s.get("std") is not None else "")


def _claim(base: dict, claim: str, verdict: Verdict, evidence: str, tests: list[dict], resolve: str = "") -> dict:
    return {**base, "claim": claim, "verdict": verdict, "holds": verdict == HOLDS, "evidence": evidence,
            "differences": tests, "to_resolve": resolve if verdict == UNRESOLVED else ""}


def _pick_rho(candidates: dict[float, dict]) -> tuple[float, str]:
    """The paper's ρ where it was run, else the candidate with the best mean (said in the evidence)."""
    if RHO_DEFAULT in candidates:
        return RHO_DEFAULT, ""
    best = max(candidates, key=lambda rho: candidates[rho]["final_top1"]["mean"])
    return best, f" (ρ = {best:g} chosen by its mean: ρ = {RHO_DEFAULT:g} was not run; the choice favours the claim)"


def comparison_claims(table: list[dict]) -> list[dict]:
    """"Si-BNN beats a sign-BNN of the same architecture and recipe, trained the same way" (at the paper's ρ where it
    was run) and "about half or more activations are zero" (per Si-BNN ρ), per (dataset, arch, recipe, method)."""
    out = []
    by: dict[tuple, list[dict]] = defaultdict(list)
    for r in table:
        by[(r["dataset"], r["arch"], r["recipe"], r.get("method", ""))].append(r)
    for (dataset, arch, recipe, method), rs in sorted(by.items(), key=lambda kv: tuple(x or "" for x in kv[0])):
        base = {"dataset": dataset, "arch": arch, "recipe": recipe}
        first = len(out)
        si = {r["rho"]: r for r in rs if r["binarizer"] == "sibnn" and r["_top1"]}
        sign = [r for r in rs if r["binarizer"] == "sign" and r["_top1"]]
        if si and sign:
            rho, chosen = _pick_rho(si)
            diff = compare(si[rho]["_top1"], sign[0]["_top1"])
            out.append(_claim({**base, "rho": rho}, "Si-BNN beats sign-BNN", diff.verdict,
                              f"top-1 Si-BNN ρ={rho:g} {_pm(si[rho]['final_top1'])} vs sign-BNN "
                              f"{_pm(sign[0]['final_top1'])}: difference {diff.describe()}{chosen}",
                              [{"versus": "sign", **diff.to_dict()}], seeds_phrase(diff)))
        for rho, r in sorted(si.items()):
            if r["_sparsity"]:
                diff = one_sample(r["_sparsity"], SPARSITY_THRESHOLD)
                out.append(_claim({**base, "rho": rho}, "about half or more of the binary activations are zero",
                                  diff.verdict, f"mean fraction of zeros {_pm(r['sparsity'], 3)}; minus "
                                  f"{SPARSITY_THRESHOLD}: {diff.describe(3)}",
                                  [{"versus": f"{SPARSITY_THRESHOLD}", **diff.to_dict()}], seeds_phrase(diff)))
        _say_how_trained(out[first:], method)
    return out


def _say_how_trained(claims: list[dict], method: str) -> None:
    """A claim about trials trained another way than once from scratch says so first in its evidence (the claim's
    own keys are the API's fixed shape)."""
    if method:
        for c in claims:
            c["evidence"] = f"trials trained {method}: {c['evidence']}"


def rho_claims(table: list[dict]) -> list[dict]:
    """"An intermediate ρ beats ρ = 0 and ρ = 1" (METHOD.md §5), per (dataset, arch), where all three were run."""
    by: dict[tuple, dict] = defaultdict(dict)
    for r in table:
        if r["binarizer"] == "sibnn" and r["_top1"]:
            by[(r["dataset"], r["arch"], r.get("method", ""))][r["rho"]] = r
    out = []
    for (dataset, arch, method), acc in sorted(by.items(), key=lambda kv: tuple(x or "" for x in kv[0])):
        first = len(out)
        mids = {rho: a for rho, a in acc.items() if 0 < rho < 1}
        if not (0.0 in acc and 1.0 in acc and mids):
            continue
        rho, chosen = _pick_rho(mids)
        d0 = compare(mids[rho]["_top1"], acc[0.0]["_top1"])
        d1 = compare(mids[rho]["_top1"], acc[1.0]["_top1"])
        verdicts = {d0.verdict, d1.verdict}
        verdict = FAILS if FAILS in verdicts else HOLDS if verdicts == {HOLDS} else UNRESOLVED
        unresolved = [f"vs ρ = {e}: {seeds_phrase(d)}" for e, d in (("0", d0), ("1", d1)) if d.verdict == UNRESOLVED]
        out.append(_claim({"dataset": dataset, "arch": arch, "rho": rho, "best_intermediate_rho": rho},
                          "an intermediate ρ beats ρ = 0 and ρ = 1", verdict,
                          f"top-1 ρ={rho:g} {_pm(mids[rho]['final_top1'])}, ρ=0 {_pm(acc[0.0]['final_top1'])}, "
                          f"ρ=1 {_pm(acc[1.0]['final_top1'])}; ρ={rho:g} − ρ=0: {d0.describe()}; ρ={rho:g} − ρ=1: "
                          f"{d1.describe()}{chosen}",
                          [{"versus": "rho 0", **d0.to_dict()}, {"versus": "rho 1", **d1.to_dict()}],
                          "; ".join(unresolved)))
        _say_how_trained(out[first:], method)
    return out
