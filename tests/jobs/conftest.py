import os

import pytest

from service import stack


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory):
    """A real MLflow tracking server on a SQLite file, started the way `sibnn up` starts it."""
    ml = stack.start_mlflow(tmp_path_factory.mktemp("mlflow"))
    yield ml.url
    ml.stop()


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
