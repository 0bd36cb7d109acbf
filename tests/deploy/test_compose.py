"""docker-compose.yml, read as Compose would (anchors merged, .env interpolated): the invariants of the one-box
deployment. No Docker engine needed."""
from __future__ import annotations

import configparser
import re
import stat

import pytest

from tests.deploy.deployment import (CHECKPOINTS, DOCKER, IMAGENET, RAY_SERVICES, SECRET_NAME, SECRET_VALUE,
                                     SECRETS_MOUNT, MissingVariable, command, compose_variables, dockerfile,
                                     env_example, environment, flag, interpolate, load_compose, make_secrets,
                                     published_ports, pyproject, service_secrets, volume_mounts)

LONG_RUNNING = ("postgres", "mlflow", "ray-head", "ray-worker", "api")


@pytest.fixture(scope="module")
def services():
    return load_compose()["services"]


def test_interpolation_follows_compose_rules():
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $$HOME", env) == "x d  d $HOME"
    with pytest.raises(MissingVariable, match="UNSET: say why"):
        interpolate("${UNSET:?say why}", env)


def test_the_one_box_has_postgres_mlflow_ray_head_api_and_optional_workers():
    assert set(load_compose(profiles=())["services"]) == {"postgres", "migrate", "mlflow", "ray-head", "api"}
    assert set(load_compose()["services"]) == set(LONG_RUNNING) | {"migrate"}


def test_migrations_run_once_before_the_api_which_starts_with_auto_migrate_off(services):
    mig = services["migrate"]
    assert mig["entrypoint"] == ["sibnn", "migrate"] and mig["restart"] == "no"
    assert mig["image"] == services["api"]["image"]
    assert environment(mig)["SIBNN_DATABASE_URL_FILE"] == environment(services["api"])["SIBNN_DATABASE_URL_FILE"]
    assert "SIBNN_DATABASE_URL" not in environment(mig)  # `sibnn migrate` would take it over the file
    assert mig["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["api"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert environment(services["api"])["SIBNN_AUTO_MIGRATE"] == "false"


def test_no_service_environment_holds_a_secret_only_paths_to_mounted_secret_files(services):
    for name, svc in services.items():
        mounted = {SECRETS_MOUNT + s for s in service_secrets(svc)}
        for key, value in environment(svc).items():
            for pattern in SECRET_VALUE:
                assert not pattern.search(value), (name, key, "looks like a secret value")
            if SECRET_NAME.search(key) and not key.endswith(("_FILE", "_PATH")):
                assert not key.endswith(("TOKEN", "PASSWORD", "DATABASE_URL")), (name, key, "a secret in the env")
            if key.endswith(("_FILE", "_PATH")) and SECRET_NAME.search(key):
                assert value in mounted, (name, key, value, "not a secret this service mounts")
        # and no secret on a command line either (visible in `ps`)
        if "command" in svc:
            assert not any(p.search(" ".join(command(svc))) for p in SECRET_VALUE), name


def test_every_secret_a_service_mounts_is_declared_and_made_by_make_secrets(services, tmp_path):
    declared = load_compose()["secrets"]
    made = make_secrets(tmp_path / "secrets")
    for name, svc in services.items():
        assert set(service_secrets(svc)) <= set(declared), name
    assert set(declared) == set(made)
    for secret, spec in declared.items():
        assert spec == {"file": f"./secrets/{secret}"}, secret
    moved = load_compose({"SIBNN_SECRETS_DIR": "/srv/sibnn-secrets"})["secrets"]
    assert moved["api_token"] == {"file": "/srv/sibnn-secrets/api_token"}
    # every mounted secret is read by someone: named by a *_FILE/*_PATH variable of a service that mounts it
    named = {v.removeprefix(SECRETS_MOUNT) for svc in services.values() for v in environment(svc).values()
             if v.startswith(SECRETS_MOUNT)}
    assert named == set(declared)


def test_make_secrets_writes_random_values_in_a_private_folder_and_keeps_them_on_rerun(tmp_path):
    folder = tmp_path / "secrets"
    first = make_secrets(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    passwords = {k: v for k, v in first.items() if k != "sibnn_database_url"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in passwords.values()), first
    assert len(set(passwords.values())) == len(passwords)  # no value shared between two secrets
    assert first["sibnn_database_url"] == \
        f"postgresql+psycopg://sibnn:{first['sibnn_db_password']}@postgres:5432/sibnn"
    assert make_secrets(folder) == first  # a rerun never changes a running deployment's passwords
    assert make_secrets(tmp_path / "other")["api_token"] != first["api_token"]


def test_the_secrets_folder_stays_out_of_git_and_the_image_context_and_make_writes_it():
    from tests.deploy.deployment import REPO

    makefile = (REPO / "Makefile").read_text()
    assert "\nsecrets:\n\tsh docker/make-secrets.sh secrets\n" in makefile
    assert "/secrets/" in (REPO / ".gitignore").read_text().split()
    assert "secrets" in (REPO / ".dockerignore").read_text().split()


def test_env_example_documents_every_variable_compose_reads():
    assert compose_variables() - set(env_example()) == set()


def test_env_example_holds_no_secret():
    for key, value in env_example().items():
        assert not (SECRET_NAME.search(key) and not key.endswith(("_FILE", "_PATH", "_DIR"))), key
        assert not any(p.search(value) for p in SECRET_VALUE), key


def test_every_long_running_service_has_a_healthcheck(services):
    for name in LONG_RUNNING:
        test = services[name].get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), name


def test_dependants_wait_for_healthy_dependencies(services):
    assert {k: v for k, v in services["api"]["depends_on"].items() if k != "migrate"} == \
        {s: {"condition": "service_healthy"} for s in ("postgres", "mlflow", "ray-head")}
    assert services["mlflow"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["ray-worker"]["depends_on"] == {"ray-head": {"condition": "service_healthy"}}


def test_only_the_api_and_the_mlflow_ui_may_be_published_beyond_localhost(services):
    published = {(name, cport): ip for name, svc in services.items() for ip, _, cport in published_ports(svc)}
    assert set(published) == {("api", 8000), ("mlflow", 5000), ("ray-head", 8265)}
    assert published[("ray-head", 8265)] == "127.0.0.1"
    # defaults: the API on every interface (token-protected), MLflow's UI (basic auth, plain HTTP) on localhost
    assert published[("mlflow", 5000)] == "127.0.0.1"
    assert published[("api", 8000)] == "0.0.0.0"
    for name, svc in services.items():
        assert all(hport == cport for _, hport, cport in published_ports(svc)), name


def test_every_ray_node_and_the_api_read_the_same_ray_token_file(services):
    for name in (*RAY_SERVICES, "api"):
        env = environment(services[name])
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN_PATH"] == "/run/secrets/ray_auth_token", name  # Ray reads it itself
        assert "ray_auth_token" in service_secrets(services[name]), name
        assert "RAY_AUTH_TOKEN" not in env, name


def test_the_api_token_and_database_passwords_come_from_secret_files(services):
    api, ml, pg = (environment(services[n]) for n in ("api", "mlflow", "postgres"))
    assert api["SIBNN_API_TOKEN_FILE"] == "/run/secrets/api_token"
    assert api["SIBNN_READ_TOKEN_FILE"] == "/run/secrets/read_token"
    assert api["SIBNN_DATABASE_URL_FILE"] == "/run/secrets/sibnn_database_url"
    # MLflow's URI has no password: libpq takes PGPASSWORD, exported by the entrypoint from the file
    assert ml["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg://mlflow@postgres:5432/mlflow"
    assert ml["PGPASSWORD_FILE"] == "/run/secrets/mlflow_db_password"
    assert pg["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"  # the postgres image's convention
    assert (pg["SIBNN_DB_PASSWORD_FILE"], pg["MLFLOW_DB_PASSWORD_FILE"]) == \
        ("/run/secrets/sibnn_db_password", "/run/secrets/mlflow_db_password")


def test_mlflow_runs_its_basic_auth_app_and_every_client_logs_in_from_a_secret_file(services):
    ml = services["mlflow"]
    assert flag(command(ml), "--app-name") == "basic-auth"
    env = environment(ml)
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD_FILE"] == "/run/secrets/mlflow_admin_password"
    # the auth config the image ships (docker/mlflow/basic_auth.ini) is the one compose points at
    copies = [a.split() for i, a in dockerfile("mlflow") if i == "COPY"]
    assert [c[-2:] for c in copies if c[-1] == env["MLFLOW_AUTH_CONFIG_PATH"]] == \
        [["docker/mlflow/basic_auth.ini", "/etc/mlflow/basic_auth.ini"]]
    ini = configparser.ConfigParser()
    ini.read(DOCKER / "mlflow" / "basic_auth.ini")
    assert "admin_password" not in ini["mlflow"]  # the admin's password comes from the secret file only
    assert ini["mlflow"]["database_uri"] == env["MLFLOW_BACKEND_STORE_URI"]  # users beside the runs, no password
    for name in (*RAY_SERVICES, "api"):  # the API's MlflowClient and the Ray jobs (children of the Ray nodes)
        client = environment(services[name])
        assert client["MLFLOW_TRACKING_USERNAME"] == ini["mlflow"]["admin_username"], name
        assert client["MLFLOW_TRACKING_PASSWORD_FILE"] == env["MLFLOW_AUTH_ADMIN_PASSWORD_FILE"], name
        assert "mlflow_admin_password" in service_secrets(services[name]), name


def test_the_api_reaches_ray_mlflow_and_the_database_by_service_name(services):
    api = environment(services["api"])
    assert api["SIBNN_RAY_ADDRESS"] == "http://ray-head:8265"
    assert api["SIBNN_MLFLOW_TRACKING_URI"] == api["SIBNN_JOB_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert flag(command(services["ray-head"]), "--dashboard-port") == "8265"
    assert flag(command(services["ray-head"]), "--dashboard-host") == "0.0.0.0"
    assert flag(command(services["ray-worker"]), "--address") == "ray-head:" + flag(command(services["ray-head"]),
                                                                                    "--port")
    assert flag(command(services["mlflow"]), "--port") == "5000"


def test_the_job_runs_with_the_ray_images_interpreter_and_source(services):
    api = environment(services["api"])
    assert (api["SIBNN_JOB_PYTHON"], api["SIBNN_JOB_PYTHONPATH"]) == ("/opt/venv/bin/python", "/app")


def test_mlflow_allows_the_host_names_clients_use(services):
    allowed = flag(command(services["mlflow"]), "--allowed-hosts").split(",")
    for host in ("mlflow", "mlflow:5000", "localhost", "localhost:5000", "127.0.0.1", "127.0.0.1:5000"):
        assert host in allowed
    assert "*" not in allowed


def test_mlflow_serves_artifacts_from_its_volume_and_runs_lean(services):
    ml = services["mlflow"]
    argv = command(ml)
    assert "--serve-artifacts" in argv and flag(argv, "--workers") == "1"
    dest = flag(argv, "--artifacts-destination")
    assert volume_mounts(ml)[dest] == ("mlflow-artifacts", "rw")
    assert "--default-artifact-root" not in argv  # a local root would make clients write to their own disk
    assert environment(ml)["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_ray_nodes_reserve_every_gpu_and_a_large_shm(services):
    for name in RAY_SERVICES:
        svc = services[name]
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}], name
        size = svc["shm_size"].lower()
        assert size.endswith("gb") and int(size[:-2]) >= 8, name
        assert svc.get("init") is True, name


def test_the_extra_worker_counts_no_gpu_twice_by_default(services):
    assert flag(command(services["ray-worker"]), "--num-gpus") == "0"
    assert flag(command(services["ray-head"]), "--num-gpus") is None  # the head detects every GPU


def test_checkpoints_are_one_volume_at_the_same_path_on_every_ray_node(services):
    for name in RAY_SERVICES:
        assert volume_mounts(services[name])[CHECKPOINTS] == ("sibnn-runs", "rw"), name
        assert environment(services[name])["SIBNN_STORAGE_PATH"] == CHECKPOINTS, name
    # the API tells each job where to write; it never reads checkpoints itself
    assert environment(services["api"])["SIBNN_STORAGE_PATH"] == CHECKPOINTS


def test_imagenet_is_mounted_read_only_from_the_env_path_wherever_dataset_root_is_read(services):
    custom = load_compose({"IMAGENET_DIR": "/srv/imagenet"})["services"]
    for name in (*RAY_SERVICES, "api"):
        assert volume_mounts(custom[name])[IMAGENET] == ("/srv/imagenet", "ro"), name


def test_ray_nodes_share_one_image_and_each_image_has_the_project_version(services):
    version = pyproject()["project"]["version"]
    assert services["ray-head"]["image"] == services["ray-worker"]["image"] == f"sibnn/ray:{version}"
    assert services["api"]["image"] == f"sibnn/api:{version}"
    assert services["mlflow"]["image"] == f"sibnn/mlflow:{version}"
    assert services["ray-head"]["build"]["dockerfile"] == "docker/ray.Dockerfile"
    assert services["api"]["build"]["dockerfile"] == "docker/api.Dockerfile"
    assert services["mlflow"]["build"]["dockerfile"] == "docker/mlflow.Dockerfile"


def test_the_cuda120_variant_is_a_build_arg_away(services):
    default = services["ray-head"]["build"]["args"]
    assert default == {"TORCH_INDEX_URL": "https://download.pytorch.org/whl/cu130", "DALI_CUDA": "cuda130"}
    old = load_compose({"TORCH_INDEX_URL": "https://download.pytorch.org/whl/cu126",
                        "DALI_CUDA": "cuda120"})["services"]["ray-head"]["build"]["args"]
    assert old["DALI_CUDA"] == "cuda120"


def test_postgres_creates_both_databases_on_first_start(services):
    assert volume_mounts(services["postgres"])["/docker-entrypoint-initdb.d/10-init-databases.sh"] == \
        ("./docker/postgres/init-databases.sh", "ro")
    assert volume_mounts(services["postgres"])["/var/lib/postgresql/data"] == ("postgres-data", "rw")
