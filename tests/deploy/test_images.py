"""docker/: the three images (multi-stage, non-root, healthchecked, versions from pyproject.toml), the entrypoint's
token check, the requirements list the images install, the PostgreSQL init script. No Docker engine needed."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

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
    assert build_args("api")["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


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
