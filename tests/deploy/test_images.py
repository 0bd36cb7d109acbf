"""docker/: the three images (multi-stage, non-root, healthchecked, versions from pyproject.toml), the entrypoint's
token check, the requirements list the images install, the PostgreSQL init script. No Docker engine needed."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.deploy.deployment import (DOCKER, INFRA, REPO, build_args, command, dockerfile, load_compose, pinned,
                                     pyproject)
from docker_requirements import requirements  # noqa: E402  (conftest puts docker/ on sys.path)

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
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["PSYCOPG_VERSION"])
    run = " ".join(a for i, a in dockerfile("mlflow") if i == "RUN")
    assert '"mlflow==${MLFLOW_VERSION}"' in run and '"psycopg[binary]==${PSYCOPG_VERSION}"' in run


@pytest.mark.parametrize("image", ("ray", "api"))
def test_the_ray_and_api_images_install_pyprojects_pins(image):
    run = " ".join(a for i, a in dockerfile(image) if i == "RUN")
    assert "requirements.py pyproject.toml --only torch" in run
    assert "pip install -r /tmp/requirements.txt" in run
    assert "pip install --no-deps -e ." in run


def test_the_requirements_list_keeps_every_pin_and_swaps_the_dali_cuda_build():
    pp = str(REPO / "pyproject.toml")
    ray_image = requirements(pp, rename={"nvidia-dali-cuda130": "nvidia-dali-cuda120"})
    assert f"ray[default,train,tune]=={pinned('ray')}" in ray_image
    assert f"mlflow=={pinned('mlflow')}" in ray_image
    assert f"torch=={pinned('torch')}" in ray_image
    assert f"nvidia-dali-cuda120=={pinned('nvidia-dali-cuda130')}" in ray_image
    assert not any(r.startswith("nvidia-dali-cuda130") for r in ray_image)
    api_image = requirements(pp, drop=("nvidia-dali-cuda130",))
    assert not any(r.startswith("nvidia-dali") for r in api_image)
    assert len(api_image) == len(pyproject()["project"]["dependencies"]) - 1
    assert requirements(pp, only=("torch",)) == [f"torch=={pinned('torch')}"]


def test_the_ray_image_defaults_to_cuda13_builds_of_torch_and_dali():
    args = build_args("ray")
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cu130"
    assert args["DALI_CUDA"] == "cuda130" and "nvidia-dali-cuda130" in [
        d.split("==")[0] for d in pyproject()["project"]["dependencies"]]
    assert build_args("api")["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


@pytest.mark.parametrize("image,service", [("ray", "ray-head"), ("api", "api"), ("mlflow", "mlflow")])
def test_each_images_default_command_is_its_compose_services_command(image, service):
    cmd = json.loads([a for i, a in dockerfile(image) if i == "CMD"][-1])
    compose = command(load_compose()["services"][service])
    if service == "ray-head":  # compose also fixes the Ray client port
        i = compose.index("--ray-client-server-port")
        compose = compose[:i] + compose[i + 2:]
    assert cmd == compose


def _entrypoint(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), "echo", "started"], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], **env}, timeout=10)


def test_the_entrypoint_refuses_to_start_without_the_shared_ray_token():
    r = _entrypoint({"RAY_AUTH_MODE": "token"})
    assert r.returncode == 64 and "RAY_AUTH_TOKEN is not set" in r.stderr
    r = _entrypoint({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "change-me-openssl-rand-hex-32"})
    assert r.returncode == 64 and "placeholder" in r.stderr


def test_the_entrypoint_starts_the_command_with_a_token_or_a_token_file():
    assert _entrypoint({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "abc"}).stdout == "started\n"
    assert _entrypoint({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "/run/secrets/t"}).stdout == "started\n"


def test_the_healthcheck_fails_on_an_address_where_nothing_listens():
    from service.stack import free_port

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
