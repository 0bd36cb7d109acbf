"""`sibnn up` as a user runs it (a real Ray head, MLflow server and API on free ports, a private home), attacked as
an unlucky operator would: its listening sockets are listed, the API and MLflow are SIGKILLed, it gets SIGTERM.

One stack for the module (starting one costs ~40 s); the tests run in file order and the last one stops it.
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from console.stack import SINGLE_NODE_TRAIN_ENV, free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


# --- what listens: /proc, no extra dependency ---------------------------------------------------------------------

def _descendants(roots: list[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(d))
    seen, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += children.get(pid, [])
    return seen


def _address(proto: str, hexaddr: str) -> tuple[str, int]:
    host, port = hexaddr.split(":")
    raw = bytes.fromhex(host)
    if proto.endswith("6"):  # four little-endian 32-bit words
        ip = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
        ip = ip.ipv4_mapped or ip
    else:
        ip = ipaddress.IPv4Address(raw[::-1])
    return str(ip), int(port, 16)


def listening_sockets(pids: set[int]) -> list[tuple[str, int, str, str, int]]:
    """(command, pid, protocol, address, port) of every listening TCP socket and bound UDP socket of ``pids``."""
    by_inode = {}
    for proto, state in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        try:
            lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == state:
                by_inode[f[9]] = (proto, *_address(proto, f[1]))
    found = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in by_inode:
                found.append((comm, pid, *by_inode[target[8:-1]]))
    return sorted(set(found))


# --- the stack ----------------------------------------------------------------------------------------------------

def _state(home: Path) -> dict | None:
    try:
        return json.loads((home / "stack.json").read_text())
    except (OSError, ValueError):
        return None


def _wait(cond, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(f"{what} (sibnn up rc={proc.poll()}); its output:\n{log.read_text(errors='replace')[-4000:]}")


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    out = home.parent / "sibnn-up.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIBNN_", "RAY_", "MLFLOW_"))}
    env.update(PYTHONPATH=str(REPO), SIBNN_HOME=str(home), SIBNN_MAX_ACTIVE_EXPERIMENTS="3",
               SIBNN_MAX_CLUSTER_GPUS="4")
    port = free_port()
    with open(out, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "console.cli", "up", "--port", str(port), "--num-cpus", "1"],
                                stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(REPO), start_new_session=True)
    info = {"proc": proc, "home": home, "out": out, "api": f"http://127.0.0.1:{port}"}
    try:
        state = _wait(lambda: _state(home), 240, "stack.json never appeared", proc, out)
        info["mlflow"] = state["mlflow_url"]
        yield info
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        state = _state(home) or {}
        for pid in [proc.pid, *state.get("pids", {}).values()]:  # whatever a failed test left: by process group
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def test_embedded_stack_listens_on_loopback_only(up):
    """Ray's GCS, raylet (node and object manager), dashboard and its agent, metrics, runtime-env agent, client
    server, MLflow and the API: every socket of `sibnn up`'s process tree is on 127.0.0.1."""
    pids = _descendants([up["proc"].pid])
    socks = listening_sockets(pids)
    commands = {s[0] for s in socks}
    assert "gcs_server" in commands and "raylet" in commands, socks  # the listing sees Ray's own servers
    assert len(socks) >= 8, socks
    beyond = [s for s in socks if not ipaddress.ip_address(s[3]).is_loopback]
    assert beyond == [], f"listening beyond loopback: {beyond}"


def test_sibnn_settings_reach_the_api_and_the_ray_head(up):
    state = _state(up["home"])
    for name in ("api", "ray"):
        environ = Path(f"/proc/{state['pids'][name]}/environ").read_bytes().split(b"\0")
        assert b"SIBNN_MAX_CLUSTER_GPUS=4" in environ, name
        if name == "ray":  # the single-machine Ray Train settings (stack.SINGLE_NODE_TRAIN_ENV)
            assert {f"{k}={v}".encode() for k, v in SINGLE_NODE_TRAIN_ENV.items()} <= set(environ)
    api_env = Path(f"/proc/{state['pids']['api']}/environ").read_bytes().split(b"\0")
    assert b"SIBNN_MAX_ACTIVE_EXPERIMENTS=3" in api_env
    assert f"SIBNN_HOME={up['home']}".encode() in api_env


@pytest.mark.parametrize("name,health", [("api", "{api}/healthz"), ("mlflow", "{mlflow}/health")])
def test_a_killed_child_is_restarted_and_the_ray_head_is_left_alone(up, name, health):
    url = health.format(**up)
    before = _state(up["home"])["pids"]
    assert _ok(url)
    os.kill(before[name], signal.SIGKILL)
    after = _wait(lambda: (s := _state(up["home"])) and s["pids"][name] != before[name] and _ok(url) and s["pids"],
                  180, f"{name} did not come back", up["proc"], up["out"])
    assert after["ray"] == before["ray"] and _alive(before["ray"]), "the Ray head was touched"
    assert _alive(after[name])
    log = (up["home"] / "logs" / "stack.log").read_text()
    assert f"{name} exited (-9); restart 1 in" in log, log
    assert f"{name} restarted (pid {after[name]})" in log, log
    if name == "mlflow":  # the restarted API still reaches the restarted MLflow
        r = httpx.get(f"{up['api']}/readyz", timeout=30)
        assert r.status_code == 200, r.text


def test_sigterm_stops_all_three(up):
    pids = _state(up["home"])["pids"]
    tree = _descendants([up["proc"].pid])
    up["proc"].send_signal(signal.SIGTERM)
    rc = up["proc"].wait(90)
    assert rc == 0, up["out"].read_text()[-3000:]
    assert [p for p in pids.values() if _alive(p)] == []
    assert [p for p in tree if _alive(p)] == [], "a process of the stack outlived it"
    assert not (up["home"] / "stack.json").exists()
    assert "stopped." in up["out"].read_text()
