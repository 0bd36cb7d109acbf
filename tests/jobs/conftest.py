import os

import pytest

from console import stack


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory):
    """A real MLflow tracking server on a SQLite file, started the way `sibnn up` starts it."""
    ml = stack.start_mlflow(tmp_path_factory.mktemp("mlflow"))
    yield ml.url
    ml.stop()


@pytest.fixture(scope="session")
def _local_ray_dir(tmp_path_factory):
    """The local Ray's private temp dir (short: Ray's socket paths must stay under the OS's 107-byte limit); the
    Ray is shut down at the end of the session."""
    import ray

    yield tmp_path_factory.mktemp("ray")
    if ray.is_initialized():
        ray.shutdown()


_started: dict = {}  # the RayContext of the local Ray this conftest started last


@pytest.fixture
def local_ray(_local_ray_dir):
    """One in-process local Ray for the jobs tests (2 CPUs, private temp dir), kept from test to test. A module
    that needs a cluster of another shape (tests/jobs/test_scheduling.py: fake GPUs) shuts it down and replaces it;
    the next test that asks for this fixture then starts the 2-CPU Ray again instead of finding none."""
    import ray

    if not ray.is_initialized():
        os.environ.pop("RAY_ADDRESS", None)
        _started["ctx"] = ray.init(num_cpus=2, _temp_dir=str(_local_ray_dir), include_dashboard=True,
                                   log_to_driver=False)
    return _started["ctx"]
