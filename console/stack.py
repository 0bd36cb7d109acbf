"""The embedded stack as child processes: a local Ray head (token auth, private temp dir and ports), an MLflow
server on a SQLite file, the API; plus a private PostgreSQL for tests and ``.ci/run``.

Every server runs in its own process group, started here and stopped here by that group's id (SIGTERM, then
SIGKILL): nothing else on the machine is touched — never ``ray stop``, which kills every Ray on the box.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
# The custom resource the head declares for Tune's driver functions (jobs.sweep.DRIVER_RESOURCE; not imported:
# the stack starts Ray without importing the jobs' torch/ray stack).
DRIVER_RESOURCE = "TRAIN_DRIVER_RESOURCE"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):  # hold them all open so no two are the same
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class Server:
    """A child process group with a log file."""

    name: str
    proc: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "".join(self.log_path.read_text(errors="replace").splitlines(keepends=True)[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the group, SIGKILL whatever is left after ``timeout`` (Ray's workers can linger)."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(self.proc.pid):
                self.proc.poll()
                time.sleep(0.2)
            if not _group_alive(self.proc.pid):
                break
        self.proc.poll()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie leader still "exists": reap it
    try:
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def spawn(name: str, cmd: list[str], log_path: Path, env: dict | None = None, cwd: str | None = None) -> Server:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                            start_new_session=True)
    log.close()
    return Server(name, proc, log_path)


def wait_http(server: Server, url: str, timeout: float, headers: dict | None = None, ok=(200,)) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited ({server.proc.returncode}) before answering {url}; "
                               f"log {server.log_path}:\n{server.log_tail()}")
        try:
            r = httpx.get(url, headers=headers, timeout=5)
            if r.status_code in ok:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            last = str(e)
        time.sleep(0.5)
    raise TimeoutError(f"{server.name} did not answer {url} within {timeout:.0f}s ({last}); log {server.log_path}:\n"
                       f"{server.log_tail()}")


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "MLFLOW_", "SIBNN_")) or k in ("RAY_AUTH_MODE",)}
    env.update({k: str(v) for k, v in extra.items() if v is not None})
    return env


# --- Ray ----------------------------------------------------------------------------------------------------------

@dataclass
class RayHead:
    server: Server
    gcs_address: str
    dashboard_url: str
    token: str
    temp_dir: Path
    ports: dict = field(default_factory=dict)

    def stop(self) -> None:
        # `ray start --block` and the GCS linger on SIGTERM; the cluster is disposable: SIGKILL after a short grace
        self.server.stop(timeout=5)


# Ray Train settings for a cluster that is one machine (every Ray process inherits the head's environment; Train
# passes these on to its controllers); Ray Train's environment variables, defined in
# ray.train.v2._internal.constants:
# - no preemption watcher: it watches for nodes being drained (spot instances, autoscaler scale-down); a lone
#   local head is never drained, and the watcher is one more actor process per trial;
# - the controller polls its workers every 1 s instead of 2 s: a trial's reports and its end are seen sooner
#   (on a loopback cluster a poll is a local call).
SINGLE_NODE_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1"}


def start_ray_head(state_dir: Path, token: str | None = None, num_cpus: int | None = None,
                   ports: dict | None = None, wait: bool = True, timeout: float = 120,
                   extra_env: dict | None = None) -> RayHead:
    """``ray start --head --block`` with token authentication on (``RAY_AUTH_MODE=token`` and the cluster's
    ``RAY_AUTH_TOKEN`` in the head's environment, inherited by every Ray process and job driver). Every port is
    chosen free so several clusters share a machine; the temp dir is private (short: Ray's socket paths are
    limited to 107 bytes).

    Loopback only: a single-machine cluster. ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray take 127.0.0.1 as
    the node address (``--node-ip-address 127.0.0.1`` is rewritten to the machine's address by ``ray start``), and
    Ray's GCS, raylet (node and object manager), agents and metrics bind to the node address when it is 127.0.0.1;
    the dashboard has ``--dashboard-host 127.0.0.1``. ``tests/service/test_stack_supervision.py`` lists the
    listening sockets. The head declares ``TRAIN_DRIVER_RESOURCE`` (jobs.sweep pins Tune's driver functions to it)
    and gets ``extra_env`` (the user's ``SIBNN_*`` settings, e.g. ``SIBNN_MAX_CLUSTER_GPUS``, read by the jobs)
    and ``SINGLE_NODE_TRAIN_ENV``."""
    token = token or secrets.token_hex(32)
    names = ("gcs", "dashboard", "client_server", "agent_listen", "agent_grpc", "metrics_export", "runtime_env",
             "node_manager", "object_manager")
    ports = ports or dict(zip(names, free_ports(len(names))))
    temp_dir = Path(tempfile.mkdtemp(prefix="sibnn-ray-", dir="/tmp"))
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
           "--port", str(ports["gcs"]), "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
           "--dashboard-port", str(ports["dashboard"]), "--ray-client-server-port", str(ports["client_server"]),
           "--dashboard-agent-listen-port", str(ports["agent_listen"]),
           "--dashboard-agent-grpc-port", str(ports["agent_grpc"]),
           "--metrics-export-port", str(ports["metrics_export"]), "--runtime-env-agent-port", str(ports["runtime_env"]),
           "--node-manager-port", str(ports["node_manager"]), "--object-manager-port", str(ports["object_manager"]),
           "--temp-dir", str(temp_dir), "--resources", json.dumps({DRIVER_RESOURCE: 1})]
    if num_cpus is not None:
        cmd += ["--num-cpus", str(num_cpus)]
    env = _clean_env(**{**SINGLE_NODE_TRAIN_ENV, **(extra_env or {})}, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
                     RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    server = spawn("ray head", cmd, Path(state_dir) / "logs" / "ray-head.log", env)
    head = RayHead(server, f"127.0.0.1:{ports['gcs']}", f"http://127.0.0.1:{ports['dashboard']}", token, temp_dir,
                   ports)
    if wait:
        wait_ray(head, timeout)
    return head


def wait_ray(head: RayHead, timeout: float = 120) -> None:
    """Until the job API answers an authenticated request (the dashboard comes up after the GCS)."""
    try:
        wait_http(head.server, f"{head.dashboard_url}/api/jobs/", timeout,
                  headers={"Authorization": f"Bearer {head.token}"})
    except Exception:
        head.stop()
        raise


def stop_ray_head(head: RayHead) -> None:
    head.stop()
    shutil.rmtree(head.temp_dir, ignore_errors=True)


# --- MLflow -------------------------------------------------------------------------------------------------------

@dataclass
class MlflowServer:
    server: Server
    url: str

    def stop(self) -> None:
        self.server.stop(timeout=10)


def start_mlflow(state_dir: Path, port: int | None = None, host: str = "127.0.0.1", wait: bool = True,
                 timeout: float = 120) -> MlflowServer:
    state_dir = Path(state_dir)
    (state_dir / "mlflow-artifacts").mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{state_dir / 'mlflow.db'}",
           "--default-artifact-root", str(state_dir / "mlflow-artifacts"), "--host", host, "--port", str(port),
           "--workers", "1", "--allowed-hosts", f"127.0.0.1:{port},localhost:{port},127.0.0.1,localhost"]
    # Job execution off: start-up ~8 s / 0.5 GB instead of ~17 s / 3 GB.
    env = _clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    server = spawn("mlflow", cmd, state_dir / "logs" / "mlflow.log", env)
    ml = MlflowServer(server, f"http://127.0.0.1:{port}")
    if wait:
        try:
            wait_http(server, f"{ml.url}/health", timeout)
        except Exception:
            ml.stop()
            raise
    return ml


# --- API ----------------------------------------------------------------------------------------------------------

def api_env(*, home: Path, ray: RayHead | None = None, ray_address: str | None = None, ray_token: str | None = None,
            mlflow_url: str, api_token: str, database_url: str | None = None, storage_path: Path | None = None,
            **extra) -> dict:
    return _clean_env(
        SIBNN_HOME=home, SIBNN_RAY_ADDRESS=ray.dashboard_url if ray else ray_address,
        SIBNN_RAY_AUTH_TOKEN=ray.token if ray else ray_token, SIBNN_MLFLOW_TRACKING_URI=mlflow_url,
        SIBNN_API_TOKEN=api_token, SIBNN_DATABASE_URL=database_url, SIBNN_STORAGE_PATH=storage_path,
        **{f"SIBNN_{k.upper()}": v for k, v in extra.items()})


def start_api(env: dict, port: int, host: str = "127.0.0.1", log_path: Path | None = None, wait: bool = True,
              timeout: float = 60) -> Server:
    cmd = [sys.executable, "-m", "uvicorn", "service.app:app", "--host", host, "--port", str(port),
           "--no-access-log", "--timeout-graceful-shutdown", "5"]
    server = spawn("api", cmd, log_path or Path(env["SIBNN_HOME"]) / "logs" / "api.log", env,
                   cwd=str(Path(__file__).resolve().parents[1]))
    if wait:
        try:
            wait_http(server, f"http://{host}:{port}/healthz", timeout)
        except Exception:
            server.stop()
            raise
    return server


# --- the whole embedded stack -------------------------------------------------------------------------------------

STATE_FILE = "stack.json"


@dataclass
class StackInfo:
    api_url: str
    api_token: str
    mlflow_url: str
    ray_dashboard_url: str
    ray_auth_token_path: str
    home: str
    pids: dict

    def write(self, home: Path) -> Path:
        p = Path(home) / STATE_FILE
        write_private(p, json.dumps(asdict(self), indent=2))  # it holds the API token
        return p

    @classmethod
    def read(cls, home: Path) -> "StackInfo | None":
        p = Path(home) / STATE_FILE
        if not p.is_file():
            return None
        try:
            return cls(**json.loads(p.read_text()))
        except (ValueError, TypeError):
            return None


class Stack:
    """Ray head + MLflow + API, started concurrently; stopped API first, then MLflow and the Ray head together.

    Supervised (``supervise``, called in a loop by ``sibnn up``): a crashed API or MLflow is restarted on the same
    port with back-off (``RESTART_BACKOFF_S``; reset after ``STABLE_S`` up), each exit and restart logged to the
    console and ``$SIBNN_HOME/logs/stack.log``; the Ray head, which holds the running sweeps, is never touched by
    that. Only a Ray head that exits stops the stack (with its log tail). ``settings``: the user's ``SIBNN_*``
    variables, passed to the Ray head and the API; the stack's own wiring (home, Ray and MLflow addresses, tokens)
    wins over them, except ``SIBNN_API_TOKEN`` and ``SIBNN_STORAGE_PATH``, which the user may set."""

    RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
    STABLE_S = 60.0

    def __init__(self, home: Path, api_port: int = 8000, mlflow_port: int | None = None, host: str = "127.0.0.1",
                 num_cpus: int | None = None, say=print, settings: dict | None = None):
        self.home, self.api_port, self.mlflow_port, self.host = Path(home), api_port, mlflow_port, host
        self.num_cpus, self.say = num_cpus, say
        self.settings = {k: str(v) for k, v in (settings or {}).items() if k.startswith("SIBNN_")}
        self.ray: RayHead | None = None
        self.mlflow: MlflowServer | None = None
        self.api: Server | None = None
        self.info: StackInfo | None = None
        self._api_env: dict = {}
        self._restart = {name: {"failures": 0, "due": None, "since": 0.0} for name in ("mlflow", "api")}

    def start(self) -> StackInfo:
        make_home(self.home)
        token_file = self.home / "ray_auth_token"
        api_token_file = self.home / "api_token"
        ray_token = _read_or_make_secret(token_file)
        api_token = self.settings.get("SIBNN_API_TOKEN") or _read_or_make_secret(api_token_file)
        self.mlflow_port = self.mlflow_port or free_port()
        try:
            # All three at once: every address is chosen before anything starts, and the API needs neither Ray
            # nor MLflow to come up (its reconciler retries until they answer). Start-up is import-bound, so the
            # three share the cores instead of queueing.
            self.say("starting the Ray head (token auth), the MLflow server and the API…")
            self.ray = start_ray_head(self.home, token=ray_token, num_cpus=self.num_cpus, wait=False,
                                      extra_env=self.settings)
            self.mlflow = start_mlflow(self.home, port=self.mlflow_port, wait=False)
            wiring = api_env(home=self.home, ray=self.ray, mlflow_url=self.mlflow.url, api_token=api_token,
                             storage_path=None if "SIBNN_STORAGE_PATH" in self.settings else self.home / "runs")
            self._api_env = {**self.settings, **wiring}
            self.api = start_api(self._api_env, self.api_port, self.host, wait=False)
            wait_http(self.api, f"http://{self.host}:{self.api_port}/healthz", 180)
            wait_http(self.mlflow.server, f"{self.mlflow.url}/health", 180)
            wait_ray(self.ray, 180)
        except BaseException:
            self.stop()
            raise
        now = time.monotonic()
        for st in self._restart.values():
            st["since"] = now
        self.info = StackInfo(api_url=f"http://{self.host}:{self.api_port}", api_token=api_token,
                              mlflow_url=self.mlflow.url, ray_dashboard_url=self.ray.dashboard_url,
                              ray_auth_token_path=str(token_file), home=str(self.home), pids=self._pids())
        self.info.write(self.home)
        return self.info

    def _pids(self) -> dict:
        return {"ray": self.ray.server.pid, "mlflow": self.mlflow.server.pid, "api": self.api.pid}

    def _log(self, msg: str) -> None:
        self.say(msg)
        log = self.home / "logs" / "stack.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {msg}\n")

    def _server(self, name: str) -> Server:
        return self.mlflow.server if name == "mlflow" else self.api

    def _respawn(self, name: str) -> None:
        self._server(name).stop(timeout=5)  # what is left of the old process group (MLflow's uvicorn child)
        if name == "mlflow":
            self.mlflow = start_mlflow(self.home, port=self.mlflow_port, wait=False)
        else:
            self.api = start_api(self._api_env, self.api_port, self.host, wait=False)
        self.info.pids = self._pids()
        self.info.write(self.home)

    def supervise(self) -> str | None:
        """One supervision step: restart a crashed API or MLflow when its back-off has passed. Returns why the
        stack must stop (the Ray head exited), else None."""
        if self.ray is not None and not self.ray.server.alive():
            s = self.ray.server
            return f"{s.name} exited ({s.proc.returncode}); log {s.log_path}:\n{s.log_tail()}"
        now = time.monotonic()
        for name, st in self._restart.items():
            server = self._server(name)
            if server.alive():
                if st["failures"] and st["due"] is None and now - st["since"] >= self.STABLE_S:
                    st["failures"] = 0
                continue
            if st["due"] is None:
                delay = self.RESTART_BACKOFF_S[min(st["failures"], len(self.RESTART_BACKOFF_S) - 1)]
                st["failures"] += 1
                st["due"] = now + delay
                self._log(f"{server.name} exited ({server.proc.returncode}); restart {st['failures']} in "
                          f"{delay:g}s (the Ray head is left running); log {server.log_path}:\n{server.log_tail(10)}")
            elif now >= st["due"]:
                self._respawn(name)
                st["due"], st["since"] = None, now
                self._log(f"{name} restarted (pid {self._server(name).pid})")
        return None

    def stop(self) -> None:
        """The API first (nothing reconciles against a half-stopped stack), then MLflow and the Ray head at once:
        each waits out its own grace period, and neither needs the other to stop."""
        if self.api is not None:
            self.api.stop(timeout=10)
        others = [threading.Thread(target=fn, args=args) for fn, args in
                  ((MlflowServer.stop, (self.mlflow,)), (stop_ray_head, (self.ray,))) if args[0] is not None]
        for t in others:
            t.start()
        for t in others:
            t.join()
        (self.home / STATE_FILE).unlink(missing_ok=True)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def make_home(home: Path) -> None:
    """The state folder (tokens, database, logs), created 0700: ``os.mkdir`` with the mode, so it is never open to
    others, whatever the umask (a umask only removes bits). A folder that already exists is left as it is."""
    home = Path(home)
    home.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(home, 0o700)
    except FileExistsError:
        return
    os.chmod(home, 0o700)  # a umask that removed our own bits too (0o7xx): restore them; never wider than 0700


def write_private(path: Path, text: str) -> None:
    """``text`` as the file ``path``, readable by this user only from its first byte: written to a new file created
    0600 (``os.open`` with the mode and ``O_EXCL``, under a temporary name beside it) and moved into place, so
    neither another user nor a half-written file is ever seen, whatever the umask."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_or_make_secret(path: Path) -> str:
    """The token in ``path``; a missing or empty file is replaced by a new private one (``write_private``)."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if token:
        return token
    token = secrets.token_hex(32)
    write_private(path, token)
    return token
