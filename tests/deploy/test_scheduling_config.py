"""The deployments' scheduling settings (issue 12 item 3): the head declares the Tune driver resource in compose,
KubeRay and the embedded stack, and KubeRay's SIBNN_MAX_CLUSTER_GPUS / _CPUS match its worker group at maxReplicas.
Parsed; no cluster needed."""
from __future__ import annotations

import json

from jobs.sweep import DRIVER_RESOURCE, MAX_CPUS_ENV, MAX_GPUS_ENV
from console import stack
from tests.deploy.deployment import command, env_of, environment, flag, load_compose, manifest


def _cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_kuberay_max_cluster_size_is_the_worker_group_at_max_replicas():
    spec = manifest("RayCluster", "sibnn")["spec"]
    (head,) = spec["headGroupSpec"]["template"]["spec"]["containers"]
    env = env_of(head)
    (group,) = spec["workerGroupSpecs"]
    (worker,) = group["template"]["spec"]["containers"]
    gpus = group["maxReplicas"] * int(worker["resources"]["limits"]["nvidia.com/gpu"])
    cpus = _cpus(head["resources"]["limits"]["cpu"]) + group["maxReplicas"] * _cpus(worker["resources"]["limits"]["cpu"])
    assert float(env[MAX_GPUS_ENV]["value"]) == gpus
    assert float(env[MAX_CPUS_ENV]["value"]) == cpus
    assert "SIBNN_ALLOW_PENDING_RESOURCES" not in env  # replaced by the sizes above


def test_kuberay_head_declares_the_driver_resource_in_kuberays_quoting():
    params = manifest("RayCluster", "sibnn")["spec"]["headGroupSpec"]["rayStartParams"]
    raw = params["resources"]  # KubeRay passes it to `ray start --resources=<raw>` through a shell
    assert raw.startswith('"') and raw.endswith('"')
    assert json.loads(raw[1:-1].replace('\\"', '"')) == {DRIVER_RESOURCE: 1}
    for group in manifest("RayCluster", "sibnn")["spec"]["workerGroupSpecs"]:
        assert "resources" not in group["rayStartParams"]  # drivers never land on a GPU pod


def test_compose_head_declares_the_driver_resource_and_passes_the_max_gpus():
    services = load_compose()["services"]
    assert json.loads(flag(command(services["ray-head"]), "--resources")) == {DRIVER_RESOURCE: 1}
    assert flag(command(services["ray-worker"]), "--resources") is None
    assert MAX_GPUS_ENV in environment(services["ray-head"])


def test_embedded_head_declares_the_driver_resource():
    assert stack.DRIVER_RESOURCE == DRIVER_RESOURCE
