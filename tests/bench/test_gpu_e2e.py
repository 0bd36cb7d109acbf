"""bench/gpu_e2e.sh --dry-run: the GPU machine's end-to-end script, run with tiny sizes on this CPU machine (a local
Ray head declaring one fake GPU, DALI on CPU threads, MLflow in a sqlite file), so it cannot rot between GPU runs."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_gpu_e2e_dry_run_does_every_step(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_e2e.sh"), "--dry-run"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=880)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "failed" not in (tmp_path / "steps.txt").read_text()
    # 1. jobs.run trained 3 epochs and MLflow gave back images/s for each
    e2e = (tmp_path / "e2e.txt").read_text()
    m = re.search(r"images/s per epoch ([\d, ]+);", e2e)
    assert m and len(m.group(1).split(",")) == 3 and "FINISHED" in e2e, e2e
    # 2. the train-step table has the fused and the reference binarizer next to FP
    steps = (tmp_path / "train_step.txt").read_text()
    assert all(f"| {b} |" in steps for b in ("fp", "sibnn", "sibnn-fused", "sibnn-ref")), steps
    # 3. DALI alone, and epochs 2..E against one long epoch
    data = (tmp_path / "data.txt").read_text()
    assert "| rrc |" in data and "one long epoch" in data, data
    # 4. the four trials ran at once (dry mode: 1 CPU each + 0.01 for each driver, on CPU workers; Ray Train puts
    # GPU workers on NCCL, which CPU torch lacks) and all finished (jobs.run's exit status, checked in steps.txt)
    assert (tmp_path / "packing.txt").read_text().strip() == "CPU in use at once: 4.04 of 5"
