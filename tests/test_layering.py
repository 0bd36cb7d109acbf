"""The layering as a checked contract (pyproject [tool.importlinter]): console → service → jobs → sibnn, and the
console knows only the API's schemas; sibnn imports no Ray,
MLflow or web framework; the API process never imports torch — checked statically by import-linter and at run time
by importing the app in a fresh interpreter."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = ("Layers: console -> service -> jobs -> sibnn, never back",
             "console imports nothing of the service but service.schemas",
             "sibnn imports no ray, mlflow or web framework",
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


def test_the_console_contract_forbids_every_service_module_but_the_schemas():
    # A service module added later and left off the list would be open to the console: the list must be complete.
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (contract,) = [c for c in cfg if c["name"] == CONTRACTS[1]]
    modules = {f"service.{p.stem}" for p in (ROOT / "service").glob("*.py") if p.stem != "__init__"}
    modules |= {f"service.{p.name}" for p in (ROOT / "service").iterdir() if (p / "__init__.py").is_file()}
    assert set(contract["forbidden_modules"]) == modules - {"service.schemas"}


def test_the_service_package_holds_no_operator_tools():
    # The command line, its client and the embedded stack live in console/; the test PostgreSQL in tests/.
    assert not {"cli.py", "client.py", "stack.py"} & {p.name for p in (ROOT / "service").iterdir()}
    assert "start_postgres" not in (ROOT / "console" / "stack.py").read_text()
