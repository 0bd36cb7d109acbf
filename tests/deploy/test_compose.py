"""docker-compose.yml, read as Compose would (anchors merged, .env interpolated): the invariants of the one-box
deployment. No Docker engine needed."""
from __future__ import annotations

import pytest

from tests.deploy.deployment import (CHECKPOINTS, IMAGENET, RAY_SERVICES, TEST_SECRETS, MissingVariable,
                                     command, compose_variables, env_example, environment, flag, interpolate,
                                     load_compose, published_ports, pyproject, volume_mounts)

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
    assert environment(mig)["SIBNN_DATABASE_URL"] == environment(services["api"])["SIBNN_DATABASE_URL"]
    assert mig["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["api"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert environment(services["api"])["SIBNN_AUTO_MIGRATE"] == "false"


@pytest.mark.parametrize("secret", sorted(TEST_SECRETS))
def test_compose_refuses_to_start_without_each_secret(secret):
    env = {k: v for k, v in TEST_SECRETS.items() if k != secret}
    with pytest.raises(MissingVariable, match=secret):
        load_compose(env)


def test_env_example_documents_every_variable_compose_reads():
    assert compose_variables() - set(env_example()) == set()


def test_env_example_placeholders_are_refused_by_the_entrypoint():
    # the Ray token's placeholder must be something docker/entrypoint.sh rejects (see test_images)
    assert env_example()["RAY_AUTH_TOKEN"].startswith("change-me")


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
    # defaults: the API on every interface (token-protected), MLflow's UI (no login) on localhost only
    assert published[("mlflow", 5000)] == "127.0.0.1"
    assert published[("api", 8000)] == "0.0.0.0"
    for name, svc in services.items():
        assert all(hport == cport for _, hport, cport in published_ports(svc)), name


def test_every_ray_node_and_the_api_carry_the_same_ray_token(services):
    for name in (*RAY_SERVICES, "api"):
        env = environment(services[name])
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"] == TEST_SECRETS["RAY_AUTH_TOKEN"], name


def test_the_api_token_and_database_passwords_come_from_env(services):
    api, ml, pg = (environment(services[n]) for n in ("api", "mlflow", "postgres"))
    assert api["SIBNN_API_TOKEN"] == TEST_SECRETS["SIBNN_API_TOKEN"]
    assert api["SIBNN_DATABASE_URL"] == \
        f"postgresql+psycopg://sibnn:{TEST_SECRETS['SIBNN_DB_PASSWORD']}@postgres:5432/sibnn"
    assert ml["MLFLOW_BACKEND_STORE_URI"] == \
        f"postgresql+psycopg://mlflow:{TEST_SECRETS['MLFLOW_DB_PASSWORD']}@postgres:5432/mlflow"
    assert (pg["SIBNN_DB_PASSWORD"], pg["MLFLOW_DB_PASSWORD"]) == \
        (TEST_SECRETS["SIBNN_DB_PASSWORD"], TEST_SECRETS["MLFLOW_DB_PASSWORD"])
    # the password is never on a command line (visible in `ps`)
    for name, svc in services.items():
        if "command" in svc:
            assert not any(secret in " ".join(command(svc)) for secret in TEST_SECRETS.values()), name


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
    custom = load_compose({**TEST_SECRETS, "IMAGENET_DIR": "/srv/imagenet"})["services"]
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
    old = load_compose({**TEST_SECRETS, "TORCH_INDEX_URL": "https://download.pytorch.org/whl/cu126",
                        "DALI_CUDA": "cuda120"})["services"]["ray-head"]["build"]["args"]
    assert old["DALI_CUDA"] == "cuda120"


def test_postgres_creates_both_databases_on_first_start(services):
    assert volume_mounts(services["postgres"])["/docker-entrypoint-initdb.d/10-init-databases.sh"] == \
        ("./docker/postgres/init-databases.sh", "ro")
    assert volume_mounts(services["postgres"])["/var/lib/postgresql/data"] == ("postgres-data", "rw")
