"""Markers for the whole suite. `integration`: the test needs a server process (Ray, MLflow, PostgreSQL, the API,
moto's S3, a browser). It is set here from the fixtures a test uses (directly or through other fixtures), so a new
test is marked by what it asks for, not by someone remembering to. `make test-fast` leaves these out (and `slow`);
`make test` and CI run everything."""
from __future__ import annotations

import os
import sys

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


# CI's run of stop 26 printed pytest's summary ("1 failed, 1169 passed ... in 2798.81s") and then make reported
# "Segmentation fault": the crash came after the last test, while native libraries the suite loaded (Ray's core
# worker, gRPC, torch's thread pools) were torn down with the interpreter. That is no test outcome, but it turns
# any status into a failure. So once pytest has its exit status and every other plugin has unconfigured, the
# process ends with that status at once (os._exit, after flushing), skipping the interpreter's teardown.
# SIBNN_TESTS_FULL_TEARDOWN=1 keeps the normal teardown (run with `python -X faulthandler -m pytest` to see a stack).
_session: dict = {}


def pytest_sessionfinish(session, exitstatus):
    _session["status"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if "status" in _session and os.environ.get("SIBNN_TESTS_FULL_TEARDOWN") != "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_session["status"])
