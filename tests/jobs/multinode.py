"""A real multi-node Ray cluster on one machine, for the fault tests (tests/jobs/test_multinode.py).

Every node is its own ``ray start --block`` process group with its own temp dir, CPUs, resources, ports and node
address, all loopback addresses (the whole 127/8 is the loopback interface): the head (``start_head``: token auth,
``TRAIN_DRIVER_RESOURCE``, as ``console.stack.start_ray_head`` starts it) on 127.0.0.2, worker nodes
(``start_worker_node``: ``ray start --address <head's GCS> --node-ip-address 127.0.0.3 …``) on 127.0.0.3 and up. So
the cluster stays on this machine, yet each node has an address of its own, as nodes on separate machines would.
Why not 127.0.0.1: ``ray start`` rewrites 127.0.0.1 (in ``--address`` and ``--node-ip-address``) to the machine's
network address, where a head bound to 127.0.0.1 does not listen; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which
keeps ``sibnn up``'s head on 127.0.0.1, makes ``ray start`` refuse to start a worker node at all.

A node is stopped or killed by its own process ids only (never ``ray stop``, which kills every Ray on the box). Its
Ray workers run in process groups of their own: each node's environment carries ``NODE_MARKER``, by which
``node_pids`` finds all of a node's processes. A stopped node's Ray logs are kept in the test's folder.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from console import stack

# Ports for the nodes come from below the kernel's ephemeral range (32768-60999 by default): a port found free there
# can be taken, before Ray binds it, by any outgoing connection on this busy machine (other clusters' clients), and
# Ray's agents fail with "Address already in use". Above Ray's default worker ports (10002-19999).
PORT_RANGE = (20000, 32000)


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports in ``PORT_RANGE`` that nothing listens on or connects from, on any address."""
    import random
    import socket

    rng = random.Random()
    ports: list[int] = []
    while len(ports) < n:
        port = rng.randrange(*PORT_RANGE)
        if port in ports:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
        ports.append(port)
    return ports


# Worker processes per node that can hold a port at once (Train workers, their replacements, Ray's helpers).
WORKER_PORTS = 24
OBJECT_STORE_BYTES = 100 * 1024 * 1024  # tiny models: Ray's default (30 % of RAM) per node is far too much


NODE_MARKER = "SIBNN_TEST_RAY_NODE"  # in each node's environment, inherited by every process of the node


def node_pids(marker: str) -> dict[int, str]:
    """Every live process whose environment carries ``NODE_MARKER=marker``, pid → command line: the node's
    ``ray start``, raylet, agents and also its Ray workers, which run in process groups of their own."""
    needle = f"{NODE_MARKER}={marker}".encode()
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            out[int(entry.name)] = cmd
    return out


def keep_logs(temp_dir: Path, dest: Path) -> None:
    """Ray's own logs of a node (raylet, GCS, workers) out of its temp dir before it is removed, for a post-mortem."""
    logs = Path(temp_dir) / "session_latest" / "logs"
    if logs.is_dir():
        shutil.copytree(logs, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sock", "events"))


def kill_leftovers(marker: str, timeout: float = 10) -> list[int]:
    """SIGKILL what is left of a node (workers that outlived their raylet); returns their pids."""
    left = list(node_pids(marker))
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while node_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@dataclass
class WorkerNode:
    server: stack.Server
    node_ip: str
    temp_dir: Path
    resources: dict
    num_cpus: int
    state_dir: Path

    @property
    def marker(self) -> str:
        return self.temp_dir.name

    def pids(self) -> dict[int, str]:
        return node_pids(self.marker)

    def raylet_pid(self) -> int:
        found = [pid for pid, cmd in self.pids().items() if cmd.split(" ", 1)[0].endswith("/raylet")]
        if len(found) != 1:
            raise RuntimeError(f"node {self.node_ip}: raylets {found} among {self.pids()}")
        return found[0]

    def kill_raylet(self) -> int:
        """SIGKILL this node's raylet: the node is lost (``ray start --block`` sees it and stops the node's other
        processes; its workers lose their raylet and exit). Returns the raylet's pid."""
        pid = self.raylet_pid()
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self, grace: float = 5) -> None:
        self.server.stop(timeout=grace)
        kill_leftovers(self.marker)
        keep_logs(self.temp_dir, self.state_dir / "logs" / f"{self.node_ip}-{self.marker}")
        shutil.rmtree(self.temp_dir, ignore_errors=True)


HEAD_IP = "127.0.0.2"


def start_head(state_dir: Path, *, num_cpus: int = 1, env: dict | None = None, token: str | None = None,
               ports: dict | None = None, timeout: float = 180) -> stack.RayHead:
    """The cluster's head, as ``console.stack.start_ray_head`` starts it (token auth, every port free and private,
    its own temp dir, ``TRAIN_DRIVER_RESOURCE`` for Tune's drivers, ``num_cpus``) but on ``HEAD_IP``: a worker
    node's ``ray start --address 127.0.0.1:…`` is rewritten to the machine's network address, where a head bound
    to 127.0.0.1 does not listen. ``token`` and ``ports``: a restarted head's, to come back where it was."""
    import secrets

    token = token or secrets.token_hex(32)
    names = ("gcs", "dashboard", "client_server", "agent_listen", "agent_grpc", "metrics_export", "runtime_env",
             "node_manager", "object_manager")
    ports = ports or dict(zip(names, free_ports(len(names))))
    temp_dir = Path(tempfile.mkdtemp(prefix="sibnn-rayh-", dir="/tmp"))
    cmd = [str(stack.BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
           "--node-ip-address", HEAD_IP, "--port", str(ports["gcs"]),
           "--include-dashboard", "true", "--dashboard-host", HEAD_IP, "--dashboard-port", str(ports["dashboard"]),
           "--ray-client-server-port", str(ports["client_server"]),
           "--dashboard-agent-listen-port", str(ports["agent_listen"]),
           "--dashboard-agent-grpc-port", str(ports["agent_grpc"]),
           "--metrics-export-port", str(ports["metrics_export"]), "--runtime-env-agent-port", str(ports["runtime_env"]),
           "--node-manager-port", str(ports["node_manager"]), "--object-manager-port", str(ports["object_manager"]),
           "--object-store-memory", str(OBJECT_STORE_BYTES), "--temp-dir", str(temp_dir),
           "--num-cpus", str(num_cpus), "--num-gpus", "0", "--resources", json.dumps({stack.DRIVER_RESOURCE: 1})]
    # SINGLE_NODE_TRAIN_ENV: no node here is ever drained, so no preemption watcher (one actor fewer per trial)
    node_env = stack._clean_env(**{**stack.SINGLE_NODE_TRAIN_ENV, **(env or {})}, RAY_AUTH_MODE="token",
                                RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0", **{NODE_MARKER: temp_dir.name})
    server = stack.spawn("ray head", cmd, Path(state_dir) / "logs" / "ray-head.log", node_env)
    head = stack.RayHead(server, f"{HEAD_IP}:{ports['gcs']}", f"http://{HEAD_IP}:{ports['dashboard']}", token,
                         temp_dir, ports)
    stack.wait_ray(head, timeout)
    return head


def stop_head(head: stack.RayHead) -> None:
    """The head's process group, then whatever of the head outlived it (job drivers, Tune and Train actors: Ray
    workers run in process groups of their own). Its Ray logs are kept next to its ``ray start`` log."""
    head.stop()
    kill_leftovers(head.temp_dir.name)
    keep_logs(head.temp_dir, head.server.log_path.parent / f"head-{head.temp_dir.name}")
    shutil.rmtree(head.temp_dir, ignore_errors=True)


def start_worker_node(head: stack.RayHead, node_ip: str, state_dir: Path, *, num_cpus: int = 1,
                      resources: dict | None = None, env: dict | None = None) -> WorkerNode:
    """``ray start --address`` a worker node on ``node_ip`` (a loopback address other than 127.0.0.1) with the
    head's token and ``env`` (the node's environment: its S3 endpoint and credentials, as a cluster node has)."""
    names = ("node_manager", "object_manager", "metrics_export", "agent_listen", "agent_grpc", "runtime_env")
    ports = dict(zip(names, free_ports(len(names))))
    worker_ports = free_ports(WORKER_PORTS)
    temp_dir = Path(tempfile.mkdtemp(prefix="sibnn-rayw-", dir="/tmp"))  # short: socket paths ≤ 107 bytes
    cmd = [str(stack.BIN / "ray"), "start", "--block", "--disable-usage-stats", "--address", head.gcs_address,
           "--node-ip-address", node_ip, "--num-cpus", str(num_cpus), "--num-gpus", "0",
           "--resources", json.dumps(resources or {}), "--temp-dir", str(temp_dir),
           "--object-store-memory", str(OBJECT_STORE_BYTES),
           "--node-manager-port", str(ports["node_manager"]), "--object-manager-port", str(ports["object_manager"]),
           "--metrics-export-port", str(ports["metrics_export"]),
           "--dashboard-agent-listen-port", str(ports["agent_listen"]),
           "--dashboard-agent-grpc-port", str(ports["agent_grpc"]),
           "--runtime-env-agent-port", str(ports["runtime_env"]),
           "--worker-port-list", ",".join(map(str, worker_ports))]
    node_env = stack._clean_env(**{**stack.SINGLE_NODE_TRAIN_ENV, **(env or {})}, RAY_AUTH_MODE="token",
                                RAY_AUTH_TOKEN=head.token, RAY_USAGE_STATS_ENABLED="0",
                                **{NODE_MARKER: temp_dir.name})
    server = stack.spawn(f"ray worker {node_ip}", cmd, Path(state_dir) / "logs" / f"ray-worker-{node_ip}.log",
                         node_env)
    return WorkerNode(server, node_ip, temp_dir, dict(resources or {}), num_cpus, Path(state_dir))


def ray_api(head: stack.RayHead, path: str, **params) -> dict:
    r = httpx.get(f"{head.dashboard_url}{path}", params=params,
                  headers={"Authorization": f"Bearer {head.token}"}, timeout=30)
    r.raise_for_status()
    return r.json()


def nodes(head: stack.RayHead) -> list[dict]:
    """The cluster's nodes as Ray's state API lists them (node_id, node_ip, state, resources_total, …)."""
    return ray_api(head, "/api/v0/nodes", limit=1000)["data"]["result"]["result"]


def alive_nodes(head: stack.RayHead) -> list[dict]:
    return [n for n in nodes(head) if n["state"] == "ALIVE"]


class NodeExited(RuntimeError):
    """A worker node's ``ray start`` exited before the node joined (its log tail in the message)."""


def wait_nodes(head: stack.RayHead, ips: set[str], timeout: float = 120, workers: list[WorkerNode] = ()) -> None:
    """Until every address in ``ips`` is an ALIVE node of the cluster."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        for n in workers:
            if not n.server.alive():
                raise NodeExited(f"{n.server.name} exited ({n.server.proc.returncode}):\n{n.server.log_tail()}")
        try:
            seen = {n["node_ip"] for n in alive_nodes(head)}
        except httpx.HTTPError:
            seen = set()
        if ips <= seen:
            return
        time.sleep(1)
    raise TimeoutError(f"nodes {sorted(ips - seen)} did not join within {timeout:.0f}s (alive: {sorted(seen)}); "
                       + "; ".join(f"{n.server.name}:\n{n.server.log_tail(15)}" for n in workers))


def train_worker_ips(head: stack.RayHead) -> list[str]:
    """The node address of each live Ray Train worker actor (class ``RayTrainWorker``), sorted."""
    actors = ray_api(head, "/api/v0/actors", limit=1000, filter_keys="class_name", filter_predicates="=",
                     filter_values="RayTrainWorker")["data"]["result"]["result"]
    ip = {n["node_id"]: n["node_ip"] for n in nodes(head)}
    return sorted(ip.get(a["node_id"], "?") for a in actors if a["state"] == "ALIVE")


@dataclass
class Moto:
    server: stack.Server
    endpoint: str
    env: dict = field(default_factory=dict)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="test",
                            aws_secret_access_key="test", region_name="us-east-1")

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


def start_moto(state_dir: Path, bucket: str) -> Moto:
    """moto's S3 server on a free loopback port, with ``bucket`` made; ``env``: the AWS SDK variables a node needs
    to reach it (pyarrow, which Ray Train writes through, reads them)."""
    port = stack.free_port()
    server = stack.spawn("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                         Path(state_dir) / "moto.log")
    endpoint = f"http://127.0.0.1:{port}"
    try:
        stack.wait_http(server, f"{endpoint}/moto-api/", 60)
        moto = Moto(server, endpoint, {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "test",
                                       "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"})
        moto.client().create_bucket(Bucket=bucket)
    except BaseException:
        server.stop()
        raise
    return moto
