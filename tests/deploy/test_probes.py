"""Every Kubernetes probe the manifests imply can run against its image: an HTTP probe targets a port the container
declares and its process opens; an exec probe's program ships in the image. Ray containers must declare their own
probes, because KubeRay < 1.6 otherwise injects ``wget`` exec probes and sibnn/ray (python:*-slim) has no wget."""
from __future__ import annotations

import re

import pytest

from tests.deploy.deployment import command, dockerfile, flag, manifests, pod_containers

PROBES = ("readinessProbe", "livenessProbe", "startupProbe")
# The official postgres image ships its client tools; our three images ship what their Dockerfiles put there.
POSTGRES_TOOLS = {"pg_isready", "psql", "bash", "sh"}


def image_name(container: dict) -> str:
    return container["image"].split(":")[0]


def runtime_stage(image: str) -> list[tuple[str, str]]:
    ins = dockerfile(image)
    start = max(i for i, (op, _) in enumerate(ins) if op == "FROM")
    return ins[start:]


def programs_in(image: str) -> set[str]:
    """What an exec probe may call in one of our images: the interpreter, the venv's console scripts we install on
    purpose, the files COPYed onto PATH, and the Debian packages the runtime stage installs (none today)."""
    out = {"python", "python3"}
    for op, args in runtime_stage(image):
        if op == "COPY":
            dest = args.split()[-1]
            if dest.startswith("/usr/local/bin/"):
                out.add(dest.rsplit("/", 1)[1])
        if op == "RUN":
            for m in re.finditer(r"apt-get install[^&;]*", args):
                out |= {w for w in m.group(0).split()[2:] if not w.startswith("-")}
    return out


def opened_ports(doc: dict, container: dict) -> set[int]:
    """Ports the container's process listens on, read from what starts it."""
    if doc["kind"] == "RayCluster":
        spec = doc["spec"]
        params = [spec["headGroupSpec"]["rayStartParams"]] + [g["rayStartParams"] for g in spec["workerGroupSpecs"]]
        head = container["_pod"] is spec["headGroupSpec"]["template"]["spec"]
        p = params[0] if head else next(g["rayStartParams"] for g in spec["workerGroupSpecs"]
                                       if g["template"]["spec"] is container["_pod"])
        assert p.get("dashboard-agent-listen-port") == "52365", "pin the agent port the probes use"
        return {52365} | ({6379, 8265, 10001} if head else set())
    if "command" in container:
        return {int(flag(command(container), "--port"))} if flag(command(container), "--port") else {5432}
    return set()


def probe_cases():
    for doc in manifests():
        for c in pod_containers(doc):
            yield pytest.param(doc, c, id=f"{doc['_file']}:{c['name']}")


@pytest.mark.parametrize("doc,container", list(probe_cases()))
def test_every_probe_can_run_against_the_image(doc, container):
    probes = {k: container[k] for k in PROBES if k in container}
    # No probe declared: Kubernetes runs none, except KubeRay, which then injects wget exec probes.
    assert probes or doc["kind"] != "RayCluster", "KubeRay < 1.6 would inject wget probes the image cannot run"
    assert {"readinessProbe", "livenessProbe"} <= set(probes), (doc["_file"], container["name"])
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    for kind, probe in probes.items():
        if "httpGet" in probe:
            port = probe["httpGet"]["port"]
            number = ports[port] if isinstance(port, str) else port
            assert number in ports.values(), (kind, port, "not a declared containerPort")
            assert number in opened_ports(doc, container), (kind, number, "no process listens there")
        elif "exec" in probe:
            argv = probe["exec"]["command"]
            assert not {"wget", "curl"} & set(" ".join(argv).split()), (kind, argv)
            have = POSTGRES_TOOLS if image_name(container) == "postgres" else \
                programs_in(image_name(container).removeprefix("sibnn/"))
            assert argv[0] in have, (kind, argv[0], sorted(have))
        else:
            assert "tcpSocket" in probe or "grpc" in probe, (kind, probe)


def test_the_ray_image_has_no_wget_for_kuberays_default_probes():
    # The premise of the explicit probes: if a later Dockerfile adds wget, the defaults would work too.
    assert "wget" not in programs_in("ray")
    assert not any("wget" in args for op, args in runtime_stage("ray") if op == "RUN")


def test_ray_probes_use_the_unauthenticated_unified_health_endpoint():
    doc = next(d for d in manifests() if d["kind"] == "RayCluster")
    for c in pod_containers(doc):
        for kind in ("readinessProbe", "livenessProbe"):
            assert c[kind]["httpGet"]["path"] == "/api/healthz"
