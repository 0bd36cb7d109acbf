"""Markers for the whole suite. `integration`: the test needs a server process (Ray, MLflow, PostgreSQL, the API,
moto's S3, a browser). It is set here from the fixtures a test uses (directly or through other fixtures), so a new
test is marked by what it asks for, not by someone remembering to. `make test-fast` leaves these out (and `slow`);
`make test` and CI run everything."""
from __future__ import annotations

import pytest

# Fixtures that start such a process (tests/*/conftest.py and the modules' own).
SERVER_FIXTURES = frozenset({
    "servers",          # a Ray head and an MLflow server (tests/service)
    "postgres",         # a private PostgreSQL cluster (tests/service)
    "mlflow_uri",       # an MLflow server (tests/jobs)
    "local_ray",        # an in-process local Ray (tests/jobs)
    "_local_ray_dir",
    "fake_gpu_ray",     # a local Ray with fake GPUs (tests/jobs/test_scheduling.py)
    "s3",               # moto's S3 server (tests/jobs/test_object_storage.py)
    "mlflow_server",    # MLflow + the browser (tests/service/test_mlflow_ui.py)
    "up",               # `sibnn up` (tests/service/test_stack_supervision.py)
    "compose_stack",    # the compose services as processes (tests/deploy)
    "fuzzed_api",       # a live API for schemathesis (tests/service/test_openapi_fuzz.py)
})
# Parametrized fixtures whose given parameter starts one: db_url's "postgresql" asks for `postgres` at run time.
SERVER_PARAMS = {"db_url": "postgresql"}
# The heaviest model at its paper input size (VGG-Variant, 224 px: 1-5 s per forward/backward or packing check on 2
# cores) runs in `make test` only; `make test-fast` keeps the same checks on AlexNet, ResNet and the small models.
HEAVY_ARCHS = ("vgg_variant",)


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: starts or needs a server process (Ray, MLflow, PostgreSQL, "
                                       "the API, S3, a browser); set from the fixtures in tests/conftest.py; "
                                       "`make test-fast` leaves it out")


def needs_a_server(item) -> bool:
    if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    params = getattr(getattr(item, "callspec", None), "params", {})
    return any(params.get(name) == value for name, value in SERVER_PARAMS.items())


def pytest_collection_modifyitems(config, items):
    for item in items:
        if needs_a_server(item):
            item.add_marker(pytest.mark.integration)
        if any(arch in item.nodeid for arch in HEAVY_ARCHS):
            item.add_marker(pytest.mark.slow)
