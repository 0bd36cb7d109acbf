"""End-of-sweep artifacts on the parent run: the results table (an MLflow table, ``results.json``, that the UI shows
and ``mlflow.load_table`` reads across runs; the same rows as ``results.csv``), the paper's tables of this experiment
with every claim's verdict and interval (``tables.json``: ``jobs.results``, what ``GET /tables/...?experiment_id=``
answers), accuracy vs ρ per architecture (the shape of the AAAI paper's Table 2, mean ± sample std over seeds, with
sign and FP as reference lines) and the training curves of every trial — logged with MLflow's ``log_table`` /
``log_text`` / ``log_dict`` / ``log_figure``, no temporary files."""
from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # no display on workers or CI
import matplotlib.pyplot as plt  # noqa: E402

from jobs import results, tracking  # noqa: E402
from sibnn.catalog import BINARIZERS, RHO_BINARIZERS  # noqa: E402

CSV_COLUMNS = ("trial_id", "arch", "binarizer", "rho", "seed", "state", "epochs", "final_top1", "final_top5",
               "best_top1", "best_top5", "sparsity", "theta_mean", "delta_mean", "wall_time_s", "images_per_s",
               "packed_bytes", "packed_file_bytes", "packed_latency_ms", "run_id", "best_checkpoint",
               # the columns added with teachers and two-step training after the ones readers already know: the
               # readable label, the recipe, and what makes a teacher or a stage trial (empty for the others)
               "label", "recipe", "stage", "weights", "teacher_trial", "init_trial", "final_checkpoint")


def results_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def results_table(rows: list[dict]) -> dict[str, list]:
    """The rows column by column, as ``MlflowClient.log_table`` takes them."""
    return {col: [r.get(col) for r in rows] for col in CSV_COLUMNS}


def rho_figure(rows: list[dict]):
    """Per architecture: top-1 against ρ for each binarizer that ρ shapes (``sibnn.catalog``), the others as
    reference lines; mean ± sample sd over seeds. Trials trained another way (a teacher, two-step, distilled) are
    lines of their own, named by their label. Earlier steps of two-step training are left out: not final models."""
    by_arch: dict[str, dict] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["final_top1"] is None or results.is_intermediate(r):
            continue
        key = (r["binarizer"], r["rho"] if r["binarizer"] in RHO_BINARIZERS else None, results.method_of(r))
        by_arch[r["arch"]][key].append(r["final_top1"])
    archs = sorted(by_arch)
    fig, axes = plt.subplots(1, max(1, len(archs)), figsize=(5 * max(1, len(archs)), 4), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        methods = sorted({m for (_, _, m) in by_arch[arch]})
        for b in RHO_BINARIZERS:
            for method in methods:
                pts = sorted((rho, v) for (name, rho, m), v in by_arch[arch].items() if name == b and m == method)
                if pts:
                    xs = [p[0] for p in pts]
                    means = [statistics.mean(p[1]) for p in pts]
                    errs = [results.sample_std(p[1]) for p in pts]  # the tables' convention
                    ax.errorbar(xs, means, yerr=errs, marker="o", capsize=3, label=_label(b, method))
        for (b, _, method), v in by_arch[arch].items():
            if b not in RHO_BINARIZERS:
                ax.axhline(statistics.mean(v), linestyle="--" if not method else ":",
                           color={"sign": "tab:red", "fp": "tab:green"}.get(b, "tab:gray"),
                           label=f"{_label(b, method)} ({statistics.mean(v):.1f})")
        ax.set(title=f"{arch}: top-1 vs ρ (mean ± sample sd over seeds)", xlabel="ρ", ylabel="final top-1 (%)")
        ax.legend()
    fig.tight_layout()
    return fig


def _label(binarizer: str, method: str = "") -> str:
    info = BINARIZERS.get(binarizer)
    name = info.label if info is not None else str(binarizer)
    return f"{name} · {method}" if method else name


def curves_figure(client, rows: list[dict]):
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        for ax, key in ((a1, "val_top1"), (a2, "train_loss")):
            hist = sorted((m.step, m.value) for m in client.get_metric_history(r["run_id"], key))
            if hist:
                ax.plot([h[0] for h in hist], [h[1] for h in hist], label=r["trial_id"],
                        linestyle=":" if results.is_intermediate(r) else "-")
    a1.set(title="validation top-1", xlabel="epoch", ylabel="%")
    a2.set(title="training loss", xlabel="epoch")
    if len(rows) <= 12:
        a1.legend(fontsize=7)
    fig.tight_layout()
    return fig


def experiment_tables(experiment_id: str, spec, rows: list[dict]) -> dict:
    """This experiment's paper tables and claims, as ``GET /tables/...?experiment_id=`` computes them."""
    # a teacher's or a stage's row names its own recipe (tracking.result_row); the others train with the spec's
    table_rows = results.finished({**r, "experiment_id": experiment_id, "dataset": spec.dataset.kind,
                                   "recipe": r.get("recipe") or spec.recipe.name} for r in rows)
    return {"paper-comparison": results.paper_comparison(table_rows), "rho-ablation": results.rho_ablation(table_rows)}


def log_sweep_report(client, parent_run_id: str, experiment_id: str, spec, rows: list[dict]) -> None:
    client.log_table(parent_run_id, data=results_table(rows), artifact_file="results.json")
    client.log_text(parent_run_id, results_csv(rows), "results.csv")
    client.log_dict(parent_run_id, experiment_tables(experiment_id, spec, rows), "tables.json")
    for name, fig in (("accuracy_vs_rho.png", rho_figure(rows)), ("training_curves.png", curves_figure(client, rows))):
        try:
            client.log_figure(parent_run_id, fig, name, save_kwargs={"dpi": 100})
        finally:
            plt.close(fig)
    client.set_tag(parent_run_id, "sibnn.trials_total", str(len(spec.trials())))
    client.set_tag(parent_run_id, "sibnn.trials_reported", str(len(rows)))
    client.set_tag(parent_run_id, tracking.TAG_EXPERIMENT, experiment_id)
