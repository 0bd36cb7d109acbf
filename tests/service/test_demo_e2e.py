"""`sibnn demo` end to end, as `make demo` runs it but cut to two one-epoch trials (`--quick --epochs 1`): the
embedded stack starts, the mnist5k preset is submitted through the API, progress is printed one line per trial
event (output is a pipe), the results and claims tables and the MLflow link are printed, the stack stops, exit 0.
The link's experiment in MLflow's store holds the trial runs."""
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from mlflow.tracking import MlflowClient

from console.stack import STATE_FILE, free_port

pytestmark = pytest.mark.slow


def test_sibnn_demo_prints_progress_the_claims_and_a_working_mlflow_link(tmp_path):
    home = tmp_path / "home"
    cmd = [str(Path(sys.executable).parent / "sibnn"), "demo", "--quick", "--epochs", "1", "--home", str(home),
           "--port", str(free_port())]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIBNN_")}
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
                          env={**env, "COLUMNS": "200"})
    out = proc.stdout
    assert proc.returncode == 0, out

    # progress for a log: one line per trial event
    for trial in ("mlp_small-sibnn-rho0.3-s0", "mlp_small-sign-s0"):
        assert f"{trial}: started" in out, out
        assert re.search(rf"{re.escape(trial)}: epoch 1/1 top-1 \d+\.\d\d", out), out
        assert re.search(rf"{re.escape(trial)}: finished, top-1 \d+\.\d\d", out), out
    assert re.search(r"experiment \w+: SUCCEEDED", out), out

    # the results table and the claims, each with a verdict computed from the run: the quick demo runs one seed per
    # side, so no interval can be computed and every claim is "not resolved" (jobs.results)
    assert "results of" in out and "paper-comparison" in out
    assert "the paper's claims, from the paper-comparison table" in out
    claim = re.search(r"│ Si-BNN beats sign-BNN .*│ not resolved +│", out)
    assert claim, out
    zeros = re.search(r"│ about half or more of the binary activations are zero .*│ not resolved +│", out)
    assert zeros, out

    # the MLflow link opens the training view of an experiment that holds the two trial runs
    link = re.search(r"MLflow UI: (http://127\.0\.0\.1:\d+/#/experiments/(\d+)\?workflowType=machine_learning)", out)
    assert link, out
    assert urlsplit(link.group(1)).port is not None
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([link.group(2)])
    names = {r.info.run_name for r in runs}
    assert {"Si-BNN ρ=0.3 · seed 0 · mlp_small", "sign-BNN · seed 0 · mlp_small"} <= names, names

    # the stack is down again
    assert "stopping the stack" in out
    assert not (home / STATE_FILE).exists()
