"""`sibnn up` runs the embedded stack as child processes and Ctrl-C takes all of it down."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from console.stack import StackInfo, free_port

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_sibnn_up_serves_a_ready_api_and_ctrl_c_stops_every_child(tmp_path):
    home = tmp_path / "home"
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "sibnn"), "up", "--home", str(home), "--port", str(port),
           "--num-cpus", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "COLUMNS": "200"})
    try:
        deadline = time.monotonic() + 240
        info = None
        while info is None:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "sibnn up did not write stack.json"
            time.sleep(1)
            info = StackInfo.read(home)
        assert info.api_url == f"http://127.0.0.1:{port}"
        ready = httpx.get(f"{info.api_url}/readyz", timeout=30)
        assert ready.status_code == 200, ready.json()
        assert "token set" in ready.json()["checks"]["ray"]["detail"]
        # Ray refuses requests without the stack's token
        assert httpx.get(f"{info.ray_dashboard_url}/api/jobs/", timeout=10).status_code == 401
        assert httpx.get(f"{info.mlflow_url}/health", timeout=10).status_code == 200
        pids = info.pids
        assert all(_alive(p) for p in pids.values())
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C delivers
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            pytest.fail(f"sibnn up did not stop on SIGINT:\n{out}")
    assert proc.returncode == 0, out
    assert "stopped." in out
    assert not any(_alive(p) for p in pids.values()), pids
    assert not (home / "stack.json").exists()
