"""`docker-compose config`: Compose itself validates docker-compose.yml (schema, interpolation, profiles) —
offline, no engine. Debian's docker-compose 1.29.2 (`apt-get install -y --no-install-recommends docker-compose`)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.deploy.deployment import COMPOSE_FILE, TEST_ENV, load_compose, make_secrets, service_secrets

DOCKER_COMPOSE = shutil.which("docker-compose")
if DOCKER_COMPOSE is None and os.environ.get("CI"):  # `make test` installs it: in CI its absence is a failure
    raise RuntimeError("docker-compose is not installed; `make system-deps` installs Debian's docker-compose")
needs_compose = pytest.mark.skipif(
    DOCKER_COMPOSE is None,
    reason="docker-compose is not installed (apt-get install -y --no-install-recommends docker-compose); "
           "the YAML-level checks in test_compose.py still ran")


def _config(tmp_path, env: dict, *args: str) -> subprocess.CompletedProcess:
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return subprocess.run([DOCKER_COMPOSE, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), *args, "config"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)


@needs_compose
def test_docker_compose_accepts_the_file_and_resolves_it_as_the_tests_read_it(tmp_path):
    r = _config(tmp_path, TEST_ENV, "--profile", "workers")
    assert r.returncode == 0, r.stderr
    resolved = yaml.safe_load(r.stdout)["services"]
    ours = load_compose()["services"]
    assert set(resolved) == set(ours)
    for name, svc in ours.items():
        assert [str(c) for c in resolved[name].get("command", [])] == [str(c) for c in svc.get("command", [])], name
        assert {k: str(v) for k, v in resolved[name].get("environment", {}).items()} == \
            {k: str(v) for k, v in (svc.get("environment") or {}).items()}, name
    assert resolved["ray-head"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] == "all"
    assert resolved["ray-head"]["shm_size"] == "16gb"


@needs_compose
def test_docker_compose_mounts_the_secret_files_make_secrets_writes(tmp_path):
    made = make_secrets(tmp_path / "secrets")
    r = _config(tmp_path, {"SIBNN_SECRETS_DIR": str(tmp_path / "secrets")}, "--profile", "workers")
    assert r.returncode == 0, r.stderr
    resolved = yaml.safe_load(r.stdout)
    assert {k: v["file"] for k, v in resolved["secrets"].items()} == \
        {name: str(tmp_path / "secrets" / name) for name in made}
    for name, svc in resolved["services"].items():
        assert [s if isinstance(s, str) else s["source"] for s in svc.get("secrets", [])] == \
            service_secrets(load_compose()["services"][name]), name
    # what `docker inspect` would show: the resolved environments hold none of the secret values
    text = yaml.safe_dump({n: s.get("environment", {}) for n, s in resolved["services"].items()})
    assert not [k for k, v in made.items() if v in text]
