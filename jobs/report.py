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

CSV_COLUMNS = ("trial_id", "arch", "binarizer", "rho", "seed", "state", "epochs", "final_top1", "final_top5",
               "best_top1", "best_top5", "sparsity", "theta_mean", "delta_mean", "wall_time_s", "images_per_s",
               "packed_bytes", "packed_file_bytes", "packed_latency_ms", "run_id", "best_checkpoint")


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
    by_arch: dict[str, dict] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["final_top1"] is None:
            continue
        key = ("sibnn", r["rho"]) if r["binarizer"] == "sibnn" else (r["binarizer"], None)
        by_arch[r["arch"]][key].append(r["final_top1"])
    archs = sorted(by_arch)
    fig, axes = plt.subplots(1, max(1, len(archs)), figsize=(5 * max(1, len(archs)), 4), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        pts = sorted((k[1], v) for k, v in by_arch[arch].items() if k[0] == "sibnn")
        if pts:
            xs = [p[0] for p in pts]
            means = [statistics.mean(p[1]) for p in pts]
            errs = [results.sample_std(p[1]) for p in pts]  # the tables' convention
            ax.errorbar(xs, means, yerr=errs, marker="o", capsize=3, label="Si-BNN")
        for (b, _), v in by_arch[arch].items():
            if b != "sibnn":
                ax.axhline(statistics.mean(v), linestyle="--", color={"sign": "tab:red", "fp": "tab:green"}.get(
                    b, "tab:gray"), label=f"{b} ({statistics.mean(v):.1f})")
        ax.set(title=f"{arch}: top-1 vs ρ (mean ± sample sd over seeds)", xlabel="ρ", ylabel="final top-1 (%)")
        ax.legend()
    fig.tight_layout()
    return fig


def curves_figure(client, rows: list[dict]):
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        for ax, key in ((a1, "val_top1"), (a2, "train_loss")):
            hist = sorted((m.step, m.value) for m in client.get_metric_history(r["run_id"], key))
            if hist:
                ax.plot([h[0] for h in hist], [h[1] for h in hist], label=r["trial_id"])
    a1.set(title="validation top-1", xlabel="epoch", ylabel="%")
    a2.set(title="training loss", xlabel="epoch")
    if len(rows) <= 12:
        a1.legend(fontsize=7)
    fig.tight_layout()
    return fig


def experiment_tables(experiment_id: str, spec, rows: list[dict]) -> dict:
    """This experiment's paper tables and claims, as ``GET /tables/...?experiment_id=`` computes them."""
    table_rows = results.finished({**r, "experiment_id": experiment_id, "dataset": spec.dataset.kind,
                                   "recipe": spec.recipe.name} for r in rows)
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
