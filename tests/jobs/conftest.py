import os

import pytest

from tests.servers import mlflow_server


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture(scope="session")
def local_ray(tmp_path_factory):
    """One in-process local Ray for the jobs tests (2 CPUs, private temp dir), shut down at the end."""
    import ray

    # A short private temp dir: Ray's socket paths must stay under the OS's 107-byte limit.
    temp = tmp_path_factory.mktemp("ray")
    os.environ.pop("RAY_ADDRESS", None)
    ctx = ray.init(num_cpus=2, _temp_dir=str(temp), include_dashboard=True, log_to_driver=False)
    yield ctx
    ray.shutdown()
