"""docker/: the three images (multi-stage, non-root, healthchecked, versions from pyproject.toml), the entrypoint's
token check, the requirements list the images install, the PostgreSQL init script. No Docker engine needed."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import docker_requirements  # noqa: E402  (conftest: docker/requirements.py)
import httpx
import pytest

from jobs.presets import preset
from tests.deploy.deployment import DOCKER, INFRA, REPO, build_args, command, dockerfile, load_compose, pinned, pyproject

IMAGES = ("ray", "api", "mlflow")


@pytest.mark.parametrize("image", IMAGES)
def test_each_image_is_multi_stage_and_ships_only_the_runtime(image):
    stages = [args for ins, args in dockerfile(image) if ins == "FROM"]
    assert len(stages) >= 2
    assert stages[0].endswith("AS build") and stages[-1].endswith("AS runtime")
    copies = [args for ins, args in dockerfile(image) if ins == "COPY" and "--from=build" in args]
    assert any("/opt/venv" in c for c in copies)


@pytest.mark.parametrize("image", IMAGES)
def test_each_image_runs_as_a_non_root_user_with_a_healthcheck(image):
    ins = dockerfile(image)
    users = [args for i, args in ins if i == "USER"]
    assert users and users[-1] not in ("root", "0")
    checks = [args for i, args in ins if i == "HEALTHCHECK"]
    assert len(checks) == 1 and "CMD" in checks[0] and "sibnn-healthcheck" in checks[0]


def test_all_images_use_the_same_pinned_python_that_pyproject_allows():
    bases = {image: build_args(image)["PYTHON_IMAGE"] for image in IMAGES}
    assert len(set(bases.values())) == 1, bases
    m = re.fullmatch(r"python:(3)\.(\d+)\.(\d+)-slim-\w+", bases["ray"])
    assert m, bases["ray"]  # a full patch version, not a moving tag
    assert int(m.group(2)) == 11  # the Python the project is locked and tested with
    assert pyproject()["project"]["requires-python"] == ">=3.10,<3.13"


def test_the_mlflow_image_pins_pyprojects_mlflow_and_a_postgresql_driver():
    args = build_args("mlflow")
    assert args["MLFLOW_VERSION"] == pinned("mlflow")
    run = " ".join(a for i, a in dockerfile("mlflow") if i == "RUN")
    # psycopg and the auth app's Flask-WTF at the lock's versions (tests/deploy/test_lock.py)
    assert '"mlflow==${MLFLOW_VERSION}"' in run and '"psycopg[binary]"' in run and "Flask-WTF" in run


def test_the_ray_image_defaults_to_cuda13_builds_of_torch_and_dali():
    args = build_args("ray")
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cu130"
    assert args["DALI_CUDA"] == "cuda130" and "nvidia-dali-cuda130" in [
        d.split("==")[0] for d in pyproject()["project"]["dependencies"]]
    assert "TORCH_INDEX_URL" not in build_args("api")  # the API image installs no torch at all


# --- the API image installs what the API imports, and nothing of the training stack --------------------------------

TRAINING_ONLY = {"torch", "torchvision", "scikit-learn", "matplotlib", "mlxtend", "mlflow", "nvidia-dali-cuda130",
                 "skops"}  # mlflow: the server side (it needs scikit-learn and matplotlib); the API has mlflow-skinny
TRAINING_MODULES = ("torch", "torchvision", "sklearn", "matplotlib", "mlxtend", "nvidia")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def api_image_packages() -> dict[str, str]:
    """What docker/api.Dockerfile installs: every requirements.py command of its RUN steps, run on the real lock
    (canonical name -> pin), after checking that pip installs nothing else."""
    run = " && ".join(a for i, a in dockerfile("api") if i == "RUN")
    steps = [step.strip() for step in run.split("&&")]
    pips = [step for step in steps if step.startswith("pip install")]
    assert pips == ["pip install -r /tmp/requirements.txt", "pip install --no-deps -e ."], pips
    made = [step for step in steps if "/tmp/requirements.py" in step]
    assert len(made) == 1 and made[0].endswith("> /tmp/requirements.txt"), made
    argv = shlex.split(made[0].removesuffix("> /tmp/requirements.txt"))
    assert argv[:2] == ["python", "/tmp/requirements.py"], argv
    out = subprocess.run([sys.executable, str(DOCKER / "requirements.py"), *argv[2:]], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    pins = [line for line in out.splitlines() if line]
    return {_canonical(p.split("==")[0]): p.split("==")[1] for p in pins}


def test_the_api_image_installs_none_of_the_training_stack():
    packages = api_image_packages()
    assert not TRAINING_ONLY & set(packages), sorted(TRAINING_ONLY & set(packages))
    lock = {_canonical(n): v for n, (line, _) in docker_requirements.parse_lock(str(REPO / "requirements.lock")).items()
            for v in [line.split("==")[1]]}
    for name in ("fastapi", "uvicorn", "sqlalchemy", "alembic", "psycopg", "ray", "scipy", "typer"):
        assert packages[name] == lock[name], name  # at the lock's version: what the tests ran with
    assert packages["mlflow-skinny"] == lock["mlflow"]  # MLflow's client, the same release as the server


# A sitecustomize that makes this interpreter (and every child, through PYTHONPATH) see only the API image's
# packages: a module whose file belongs only to distributions the image does not install cannot be imported.
# Stdlib and the project's own files belong to none and stay importable. Every refusal is logged.
IMAGE_ONLY = '''
import atexit, importlib.abc, importlib.machinery, importlib.metadata, os, re, sys

_allowed = set(os.environ["IMAGE_PACKAGES"].split(","))
_log = os.environ["IMAGE_LOG"]
_owners = {}
for _dist in importlib.metadata.distributions():
    _name = re.sub(r"[-_.]+", "-", _dist.metadata["Name"]).lower()
    for _f in _dist.files or ():
        _owners.setdefault(os.path.normpath(str(_dist.locate_file(_f))), set()).add(_name)


def _note(line):
    with open(_log, "a") as f:
        f.write(line + "\\n")


class ImageOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not spec.origin or not os.path.isabs(spec.origin):
            return None
        owners = _owners.get(os.path.normpath(spec.origin))
        if owners is None or owners & _allowed:
            return None
        _note(f"refused {fullname} ({', '.join(sorted(owners))})")
        raise ModuleNotFoundError(f"No module named {fullname!r} (not in the API image)", name=fullname)


sys.meta_path.insert(0, ImageOnly())
atexit.register(lambda: _note(f"loaded {sorted(m for m in sys.modules if m.split('.')[0] in {TRAINING_MODULES!r})}"))
'''


@pytest.mark.slow  # three interpreters, one of them serving the API and importing Ray's job client
def test_the_api_and_sibnn_migrate_run_with_only_the_api_images_packages(tmp_path):
    from console.stack import free_port

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(IMAGE_ONLY.replace("{TRAINING_MODULES!r}", repr(TRAINING_MODULES)))
    log = tmp_path / "image.log"
    dead = f"http://127.0.0.1:{free_port()}"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": f"{site}{os.pathsep}{REPO}",
           # and the project itself (`pip install --no-deps -e .`)
           "IMAGE_PACKAGES": ",".join([*api_image_packages(), _canonical(pyproject()["project"]["name"])]),
           "IMAGE_LOG": str(log),
           "SIBNN_HOME": str(tmp_path / "home"), "SIBNN_DATABASE_URL": f"sqlite:///{tmp_path / 'api.db'}",
           "SIBNN_RAY_ADDRESS": dead, "SIBNN_MLFLOW_TRACKING_URI": dead, "SIBNN_API_TOKEN": "t",
           "SIBNN_RAY_TIMEOUT_S": "5", "SIBNN_MLFLOW_TIMEOUT_S": "2", "SIBNN_AUTO_MIGRATE": "false"}
    # compose's migrate service and the Kubernetes init container: `sibnn migrate`
    r = subprocess.run([sys.executable, "-m", "console.cli", "migrate"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "is up to date" in r.stdout, r.stdout + r.stderr
    # the image's CMD
    port = free_port()
    api = subprocess.Popen([sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1", "--port",
                            str(port), "--no-access-log"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": "Bearer t"}
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            for _ in range(300):
                try:
                    if c.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    assert api.poll() is None, api.stdout.read()
                time.sleep(0.2)
            spec = {**preset("digits", grid={"binarizer": ["sibnn"], "rho": [0.3], "seed": [0]}).model_dump(
                mode="json"), "name": "image"}
            created = c.post("/experiments", json=spec, headers=auth)
            assert created.status_code == 202, created.text
            exp = created.json()["id"]
            want = {"/experiments": 200, f"/experiments/{exp}": 200, "/models": 200, "/models/digits_cnn": 200,
                    "/openapi.json": 200, f"/experiments/{exp}/logs": 503, f"/experiments/{exp}/results": 503,
                    "/tables/paper-comparison": 503, "/readyz": 503}
            got = {path: c.get(path) for path in want}
            assert {p: r.status_code for p, r in got.items()} == want, {p: r.text[:300] for p, r in got.items()}
            # Ray's job client was imported and asked (refused: nothing listens), not missing from the image
            ray = got[f"/experiments/{exp}/logs"].json()["detail"]
            assert f"Ray at {dead} is unreachable: Failed to connect" in ray, ray
            assert got[f"/experiments/{exp}"].json()["trials_error"].startswith("MLflow at")
    finally:
        api.send_signal(signal.SIGINT)  # uvicorn re-raises the signal it stopped on: SIGINT still runs atexit
        out, _ = api.communicate(timeout=30)
    notes = log.read_text().splitlines()
    loaded = [n for n in notes if n.startswith("loaded")]
    assert loaded == ["loaded []"] * 3, (loaded, out[-2000:])  # sibnn, its `python -m service migrate`, the API
    tried = [n for n in notes if n.startswith("refused") and n.split()[1].split(".")[0] in TRAINING_MODULES]
    assert not tried, tried


@pytest.mark.parametrize("image,service", [("ray", "ray-head"), ("api", "api"), ("mlflow", "mlflow")])
def test_each_images_default_command_is_its_compose_services_command(image, service):
    cmd = json.loads([a for i, a in dockerfile(image) if i == "CMD"][-1])
    compose = command(load_compose()["services"][service])
    if service == "ray-head":  # compose also fixes the Ray client port
        i = compose.index("--ray-client-server-port")
        compose = compose[:i] + compose[i + 2:]
    assert cmd == compose


def _entrypoint(env: dict, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), *(argv or ("echo", "started"))], capture_output=True,
                          text=True, env={"PATH": os.environ["PATH"], **env}, timeout=10)


def test_the_entrypoint_refuses_to_start_without_the_shared_ray_token(tmp_path):
    r = _entrypoint({"RAY_AUTH_MODE": "token"})
    assert r.returncode == 64 and "RAY_AUTH_TOKEN is not set" in r.stderr
    r = _entrypoint({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "change-me-openssl-rand-hex-32"})
    assert r.returncode == 64 and "placeholder" in r.stderr
    r = _entrypoint({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "absent")})
    assert r.returncode == 64 and "RAY_AUTH_TOKEN_PATH" in r.stderr and "not a readable file" in r.stderr


def test_the_entrypoint_starts_the_command_with_a_token_or_a_token_file(tmp_path):
    assert _entrypoint({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "abc"}).stdout == "started\n"
    (tmp_path / "t").write_text("abc\n")
    assert _entrypoint({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "t")}).stdout == "started\n"
    assert _entrypoint({}).stdout == "started\n"  # the MLflow image: no Ray, no token check


def test_the_entrypoint_exports_secrets_from_files_to_the_process_only(tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "admin").write_text("adm1n")
    show = ("sh", "-c", 'printf "%s|%s|%s" "$MLFLOW_TRACKING_PASSWORD" "$PGPASSWORD" "$MLFLOW_AUTH_ADMIN_PASSWORD"')
    r = _entrypoint({"MLFLOW_TRACKING_PASSWORD_FILE": str(tmp_path / "pw"), "PGPASSWORD_FILE": str(tmp_path / "pw"),
                     "MLFLOW_AUTH_ADMIN_PASSWORD_FILE": str(tmp_path / "admin")}, *show)
    assert (r.returncode, r.stdout) == (0, "s3cret|s3cret|adm1n")
    r = _entrypoint({"PGPASSWORD_FILE": str(tmp_path / "absent")}, *show)
    assert r.returncode == 64 and "PGPASSWORD_FILE=" in r.stderr and "not a readable file" in r.stderr
    r = _entrypoint({"PGPASSWORD_FILE": str(tmp_path / "pw"), "PGPASSWORD": "x"}, *show)
    assert r.returncode == 64 and "both PGPASSWORD and PGPASSWORD_FILE" in r.stderr
    (tmp_path / "empty").write_text("")
    r = _entrypoint({"MLFLOW_TRACKING_PASSWORD_FILE": str(tmp_path / "empty")}, *show)
    assert r.returncode == 64 and "is empty" in r.stderr


def test_every_image_starts_through_the_secret_exporting_entrypoint():
    for image in IMAGES:
        ins = dockerfile(image)
        assert json.loads([a for i, a in ins if i == "ENTRYPOINT"][-1]) == ["sibnn-entrypoint"], image
        assert any(i == "COPY" and a.endswith("docker/entrypoint.sh /usr/local/bin/sibnn-entrypoint") for i, a in ins)


def test_the_healthcheck_fails_on_an_address_where_nothing_listens():
    from console.stack import free_port

    r = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py"), f"http://127.0.0.1:{free_port()}/health"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "Connection refused" in r.stderr


def test_kubernetes_uses_the_same_postgres_init_script_as_compose():
    assert (INFRA / "postgres" / "init-databases.sh").read_text() == \
        (DOCKER / "postgres" / "init-databases.sh").read_text()


def test_the_docker_context_leaves_out_the_venv_the_git_dir_and_env_files():
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", ".env", "tests"):
        assert entry in ignored
    assert "!.env.example" in ignored
