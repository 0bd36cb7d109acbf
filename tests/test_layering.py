"""The layering as a checked contract (pyproject [tool.importlinter]): service → jobs → sibnn; sibnn imports no Ray,
MLflow or web framework; the API process never imports torch — checked statically by import-linter and at run time
by importing the app in a fresh interpreter."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = ("Layers: service -> jobs -> sibnn, never back", "sibnn imports no ray, mlflow or web framework",
             "jobs imports no web framework and no service",
             "The API process, the spec and the catalog never import torch")


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def test_import_linter_keeps_every_contract():
    lint = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in CONTRACTS:  # a contract deleted from pyproject would also pass: each must be there and kept
        assert f"{name} KEPT" in r.stdout, r.stdout


def _run_python(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_the_api_process_imports_no_torch():
    # the app with every route module, and a model summary served (the one that needed a forward pass before)
    assert _run_python("import sys, service.app, service.catalog as c; c.summary('vgg_variant'); "
                       "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))") == "[]"


def test_the_spec_imports_no_torch():
    assert _run_python("import sys, jobs.spec, jobs.presets; jobs.presets.preset('digits'); "
                       "print('torch' in sys.modules)") == "False"
