"""A comparison sweep with dependencies, end to end through the API: an FP teacher, Si-BNN in two steps, the
comparators once (each distilled from the teacher), an FP grid point; against a real Ray head (token auth, runner
"tune") and a real MLflow server. Its results and its paper-comparison table keep every way of training apart, one
readable row each."""
import pytest

from jobs import tracking
from jobs.spec import parse_spec
from tests.service.conftest import AUTH, api_client, live_settings, wait_status

pytestmark = pytest.mark.slow

ARCH = "digits_react"
TEACHER_ARCH = "digits_resnet"
COMPARATORS = ["sign", "xnornet_nok", "bireal", "rsign", "irnet"]
BATCH = 64
SPEC = {
    "name": "comparison e2e", "dataset": {"kind": "digits"},
    "grid": {"arch": [ARCH], "binarizer": ["sibnn", *COMPARATORS, "fp"], "rho": [0.3], "seed": [0]},
    "recipe": {"epochs": 1, "batch_size": BATCH},
    "teacher": {"arch": TEACHER_ARCH, "binarizer": "fp", "recipe": {"epochs": 2, "batch_size": BATCH}},
    "stages": [{"name": "step1", "weights": "real", "recipe": {"name": "react1", "epochs": 1, "batch_size": BATCH}},
               {"name": "step2", "weights": "binary",
                "recipe": {"name": "react2", "epochs": 1, "batch_size": BATCH, "label_smoothing": 0.1}}],
    "stage_binarizers": ["sibnn"],
    "resources": {"workers_per_trial": 1, "cpus_per_worker": 0.5, "runner": "tune"},
}

TEACHER = f"teacher-{TEACHER_ARCH}-fp-s0"
SI = f"{ARCH}-sibnn-rho0.3-s0"
STEP1, STEP2, FP = f"{SI}-step1", f"{SI}-step2", f"{ARCH}-fp-s0"
LABELS = {  # trial id → the readable label its results row and its table row carry
    TEACHER: "FP · teacher", FP: "FP",
    STEP1: "Si-BNN · 2-step, step1 (real weights) · KD", STEP2: "Si-BNN · 2-step · KD",
    f"{ARCH}-sign-s0": "sign-BNN · KD", f"{ARCH}-xnornet_nok-s0": "XNOR-Net (no K) · KD",
    f"{ARCH}-bireal-s0": "Bi-Real · KD", f"{ARCH}-rsign-s0": "ReActNet RSign · KD",
    f"{ARCH}-irnet-s0": "IR-Net · KD",
}
EPOCHS = {TEACHER: 2}  # the others: one epoch (the spec's recipe, or their stage's)


def test_a_comparison_sweep_with_a_teacher_and_two_step_si_bnn_runs_in_order_and_tabulates_side_by_side(
        servers, tmp_path):
    expected = [t.trial_id for t in parse_spec(SPEC).trials()]
    assert set(expected) == set(LABELS)

    with api_client(live_settings(servers, tmp_path)) as api:
        r = api.post("/experiments", json=SPEC, headers={**AUTH, "Idempotency-Key": "comparison-e2e-1"})
        assert r.status_code == 202, r.text
        created = r.json()
        exp_id = created["id"]
        assert created["n_trials"] == len(expected) == 9
        gpu = created["gpu_hours"]
        assert gpu is not None and gpu["total"] > 0 and set(gpu["trials"]) == set(expected)

        done = wait_status(lambda: api.get(f"/experiments/{exp_id}").json(), ("SUCCEEDED",), timeout=780, poll=2)
        assert done["reason"] is None
        trials = {t["trial_id"]: t for t in done["trials"]}
        assert list(trials) == expected, "every trial of the spec, in its dependency order"
        assert {k: t["state"] for k, t in trials.items()} == {k: "FINISHED" for k in expected}
        assert {k: t["epoch"] for k, t in trials.items()} == {k: EPOCHS.get(k, 1) for k in expected}
        assert trials[TEACHER]["role"] == "teacher" and trials[TEACHER]["arch"] == TEACHER_ARCH
        assert (trials[STEP2]["stage"], trials[STEP2]["weights"], trials[STEP2]["init_trial"],
                trials[STEP2]["teacher_trial"]) == ("step2", "binary", STEP1, TEACHER)
        assert all(trials[k].get("teacher_trial") == TEACHER for k in expected if k not in (TEACHER, FP))
        assert "teacher_trial" not in trials[FP]
        assert all("stage" not in trials[k] for k in expected if k not in (STEP1, STEP2)), \
            "only Si-BNN trains in two steps: the comparators, the FP point and the teacher train once"

        # the order the waves ran in: MLflow's start and end of each trial's run (the API names the run)
        c = tracking.client(servers.mlflow.url)
        info = {k: c.get_run(t["mlflow_run_id"]).info for k, t in trials.items()}
        start = {k: i.start_time for k, i in info.items()}
        end = {k: i.end_time for k, i in info.items()}
        assert all(end[k] is not None and end[k] >= start[k] for k in expected)
        assert start[STEP2] >= end[STEP1] and start[STEP2] >= end[TEACHER]
        assert start[STEP1] >= end[TEACHER]
        assert all(start[k] >= end[TEACHER] for k in expected if k not in (TEACHER, FP)), \
            "every distilled trial starts after its teacher finished"

        res = api.get(f"/experiments/{exp_id}/results").json()
        assert res["status"] == "SUCCEEDED"
        rows = {r["trial_id"]: r for r in res["rows"]}
        assert len(res["rows"]) == len(expected) and set(rows) == set(expected), "one row per trial"
        assert {k: r["label"] for k, r in rows.items()} == LABELS
        assert len({r["label"] for r in rows.values()}) == len(expected), "distinct labels"
        for k, r in rows.items():
            assert r["state"] == "FINISHED" and r["epochs"] == EPOCHS.get(k, 1), (k, r)
            assert r["final_top1"] is not None and 0.0 < r["final_top1"] <= 100.0, (k, r)
        assert rows[STEP2]["binarizer"] == "sibnn" and rows[STEP2]["rho"] == 0.3
        assert rows[STEP2]["method"] == "2-step · KD" and "2-step" in rows[STEP2]["label"]
        assert (rows[STEP2]["recipe"], rows[STEP1]["recipe"], rows[f"{ARCH}-irnet-s0"]["recipe"]) == \
            ("react2", "react1", "aaai")
        assert rows[TEACHER]["method"] == "teacher" and rows[FP]["method"] == ""

        # the table `sibnn table paper-comparison` prints, for this experiment: the methods side by side
        table = api.get("/tables/paper-comparison", params={"experiment_id": exp_id})
        assert table.status_code == 200, table.text
        trows = table.json()["rows"]
        assert sorted(t["label"] for t in trows) == sorted(LABELS.values()), "one row per method label"
        by_label = {t["label"]: t for t in trows}
        for trial, label in LABELS.items():
            t = by_label[label]
            assert (t["n"], t["seeds"], t["experiments"]) == (1, [0], [exp_id]), t
            assert t["binarizer"] == rows[trial]["binarizer"] and t["method"] == rows[trial]["method"]
            assert t["final_top1"]["mean"] == round(rows[trial]["final_top1"], 3)
        assert by_label["Si-BNN · 2-step · KD"]["recipe"] == "react2"
        assert by_label["Si-BNN · 2-step · KD"]["paper_top1"] is None, "the paper's numbers are one-stage, ImageNet"
