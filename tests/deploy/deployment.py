"""Read the deployment files the way Docker Compose and Kubernetes would, without either: docker-compose.yml with
``${VAR}`` interpolation from an env mapping, the Dockerfiles' instructions, the KubeRay/Kubernetes manifests."""
from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKER = REPO / "docker"
INFRA = REPO / "infra"
DOCKERFILES = {name: DOCKER / f"{name}.Dockerfile" for name in ("ray", "api", "mlflow")}

RAY_SERVICES = ("ray-head", "ray-worker")
CHECKPOINTS = "/var/lib/sibnn/runs"
IMAGENET = "/data/imagenet"

SECRETS_SCRIPT = DOCKER / "make-secrets.sh"
SECRETS_MOUNT = "/run/secrets/"
# A variable whose name says it is a secret may only name a file; values that look like one are refused anywhere.
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL|PRIVATE|_KEY\b|DATABASE_URL|STORE_URI", re.I)
SECRET_VALUE = (re.compile(r"://[^/@\s:]+:[^/@\s]+@"),   # a URL with user:password@ (or user:$(VAR)@)
                re.compile(r"\b[0-9a-f]{32,}\b"),           # a long hex string (openssl rand -hex)
                re.compile(r"change-me", re.I))
# What .env may set; no secret among them (the secrets are files: `make secrets`).
TEST_ENV: dict[str, str] = {}

_VAR = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>\w+)")


class MissingVariable(KeyError):
    pass


def interpolate(value, env: dict):
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $$ → $."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg")
        val = env.get(name)
        unset = val is None or (op is not None and op.startswith(":") and val == "")
        if op in (":-", "-") and unset:
            return arg
        if op in (":?", "?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        return "" if val is None else val

    return _VAR.sub(sub, value)


def compose_variables() -> set[str]:
    names = set()
    for m in _VAR.finditer(COMPOSE_FILE.read_text()):
        if m.group(0) != "$$":
            names.add(m.group("name") or m.group("bare"))
    return names


def load_compose(env: dict | None = None, profiles: tuple[str, ...] = ("workers",)) -> dict:
    """docker-compose.yml as Compose sees it: anchors merged, variables interpolated, profiles applied."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    doc = interpolate(raw, TEST_ENV if env is None else env)
    doc["services"] = {name: svc for name, svc in doc["services"].items()
                       if not svc.get("profiles") or set(svc["profiles"]) & set(profiles)}
    return doc


def make_secrets(folder: Path) -> dict[str, str]:
    """Run docker/make-secrets.sh (what `make secrets` runs) into ``folder``: secret name → value."""
    subprocess.run(["sh", str(SECRETS_SCRIPT), str(folder)], check=True, capture_output=True, timeout=30)
    return {p.name: p.read_text().strip() for p in sorted(folder.iterdir())}


def service_secrets(service: dict) -> list[str]:
    """The names in a service's ``secrets:`` (short or long syntax), mounted at /run/secrets/<name>."""
    return [s if isinstance(s, str) else s["source"] for s in service.get("secrets") or []]


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command(service: dict) -> list[str]:
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def flag(argv: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in an argument list."""
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def volume_mounts(service: dict) -> dict[str, tuple[str, str]]:
    """target → (source, mode) of the short-syntax volumes."""
    out = {}
    for v in service.get("volumes") or []:
        parts = v.split(":")
        source, target = parts[0], parts[1]
        out[target] = (source, parts[2] if len(parts) > 2 else "rw")
    return out


def published_ports(service: dict) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of each published port; an empty ip means every interface."""
    out = []
    for p in service.get("ports") or []:
        parts = str(p).split("/")[0].split(":")
        if len(parts) == 3:
            out.append((parts[0], int(parts[1]), int(parts[2])))
        elif len(parts) == 2:
            out.append(("", int(parts[0]), int(parts[1])))
        else:
            out.append(("", int(parts[0]), int(parts[0])))
    return out


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pinned(package: str) -> str:
    """The exact version pyproject.toml pins for ``package`` (``name==X`` or ``name[extras]==X``)."""
    for dep in pyproject()["project"]["dependencies"]:
        m = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==([\w.+-]+)", dep.replace(" ", ""))
        if m:
            return m.group(2)
    raise LookupError(f"{package} is not pinned with == in pyproject.toml")


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines, buf = [], ""
    for raw in DOCKERFILES[name].read_text().splitlines():
        s = raw.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if s.startswith("#"):
            continue
        buf += " " + s[:-1] if s.endswith("\\") else " " + s
        if not s.endswith("\\"):
            lines.append(buf.strip())
            buf = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def build_args(name: str) -> dict[str, str]:
    out = {}
    for ins, args in dockerfile(name):
        if ins == "ARG" and "=" in args:
            k, v = args.split("=", 1)
            out[k] = v
    return out


def manifests() -> list[dict]:
    docs = []
    for path in sorted(INFRA.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc["_file"] = path.name
                docs.append(doc)
    return docs


def manifest(kind: str, name: str) -> dict:
    for doc in manifests():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise LookupError(f"no {kind} {name} in infra/")


def pod_containers(doc: dict) -> list[dict]:
    """Every container (with its pod spec) of a workload or a RayCluster's groups."""
    if doc["kind"] == "RayCluster":
        specs = [doc["spec"]["headGroupSpec"]["template"]["spec"]]
        specs += [g["template"]["spec"] for g in doc["spec"]["workerGroupSpecs"]]
    elif doc["kind"] in ("Deployment", "StatefulSet", "Job"):
        specs = [doc["spec"]["template"]["spec"]]
    else:
        return []
    return [dict(c, _pod=spec) for spec in specs for c in spec["containers"]]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env") or []}
