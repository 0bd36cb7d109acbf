"""The MLflow UI in a real headless browser: the demo experiment's link opens the training view with the trial
runs listed and a val_top1 chart drawn (Debian's chromium + chromedriver, installed by `make system-deps`)."""
import json
import shutil
import uuid

import pytest

from jobs import tracking
from jobs.presets import preset
from console import stack
from service.results import experiment_link
from sibnn.train import main as train_main
from tests.service.mlflow_browser import CHROMEDRIVER, CHROMIUM, check_experiment_page

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(tmp_path):
    ml = stack.start_mlflow(tmp_path / "mlflow")
    yield ml
    ml.stop()


def test_demo_experiment_page_lists_the_trials_and_draws_val_top1(mlflow_server, tmp_path):
    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), "make system-deps installs chromium, chromium-driver"
    c = tracking.client(mlflow_server.url)
    exp_id = uuid.uuid4().hex[:12]
    # The demo preset cut to three trials of two real epochs each, recorded with the jobs' MLflow layout.
    spec = preset("mnist5k", grid={"binarizer": ["sibnn", "sign", "fp"], "rho": [0.3], "seed": [0]},
                  recipe={"epochs": 2})
    parent = tracking.ensure_parent_run(c, exp_id, spec)
    names = []
    for trial in spec.trials():
        history = tmp_path / f"{trial.trial_id}.json"
        args = ["--dataset", "mnist5k", "--arch", trial.arch, "--binarizer", trial.binarizer, "--epochs", "2",
                "--seed", str(trial.seed), "--device", "cpu", "--json", str(history)]
        assert train_main(args + (["--rho", str(trial.rho)] if trial.rho is not None else [])) == 0
        run = tracking.ensure_trial_run(c, exp_id, parent, spec, trial)
        for m in json.loads(history.read_text()):
            tracking.log_epoch(c, run, m["epoch"], m)
        tracking.set_trial_state(c, run, "FINISHED")
        names.append(c.get_run(run).info.run_name)
    exp = c.get_experiment_by_name(tracking.experiment_name(exp_id))

    shot = tmp_path / "mlflow-experiment.png"
    seen = check_experiment_page(experiment_link(mlflow_server.url, exp.experiment_id), names, shot)

    assert all(n in seen["listed"] for n in names)
    assert "workflowType=machine_learning" in seen["url"], "the UI stayed in the training view"
    assert "val_top1" in seen["chart_text"]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
