"""Where `sibnn demo` spends its time: the command's output with seconds since start, the wall time to the printed
tables, the load average before and after, and the CPU time of every process on the machine during the run, summed
by kind (Ray actor class, Ray/MLflow/API servers, other jobs).

    python bench/demo.py                      # the full mnist5k demo in a temp SIBNN_HOME, on a free port
    python bench/demo.py -- --quick           # anything after `--` goes to `sibnn demo`

A process is sampled every 0.5 s from /proc (utime + stime); one that lives less than that is missed, and processes
of other jobs on the machine are listed under their own names (their CPU time counts from the first sample). A
benchmark, not a test: it asserts nothing about time. Results: docs/demo.md.
"""
from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from console.stack import free_port

TICK = os.sysconf("SC_CLK_TCK")
SERVERS = ("dashboard", "log_monitor", "monitor.py", "mlflow", "service.app", "jobs.run", "sibnn demo", "ray start")


def _kind(cmd: str) -> str:
    """A Ray worker process is named after its actor (``ray::ImplicitFunc.train`` -> ``ray::ImplicitFunc``) once
    it holds one, ``default_worker`` before that (its command line also names the raylet: match programs first)."""
    if cmd.startswith("ray::"):
        return cmd.split()[0].split(".")[0]
    program = Path(cmd.split()[0]).name if cmd else ""
    if program in ("raylet", "gcs_server"):
        return program
    if "default_worker.py" in cmd:
        return "ray worker (before its actor)"
    for name in SERVERS:
        if name in cmd:
            return name
    return "other: " + cmd[:50]


def _cpu_s(pid: str) -> tuple[str, float] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return cmd, (int(fields[11]) + int(fields[12])) / TICK


def sample(stop: threading.Event, seen: dict) -> None:
    """pid -> [kind, CPU seconds at first sight (0 for a process born during the run), latest CPU seconds]."""
    first = True
    while not stop.is_set():
        for pid in filter(str.isdigit, os.listdir("/proc")):
            got = _cpu_s(pid)
            if got is None:
                continue
            cmd, cpu = got
            if pid not in seen:
                seen[pid] = [_kind(cmd) if cmd else "?", cpu if first else 0.0, cpu]
            else:
                seen[pid][2] = cpu
                if cmd:  # a Ray worker takes its actor's name after it starts
                    seen[pid][0] = _kind(cmd)
        first = False
        stop.wait(0.5)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("demo_args", nargs="*", help="arguments for `sibnn demo` (after --)")
    args = p.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="sibnn-demo-bench-"))
    cmd = [str(Path(sys.executable).parent / "sibnn"), "demo", "--home", str(home), "--port", str(free_port()),
           *args.demo_args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIBNN_")}
    print(f"load average before: {os.getloadavg()}  ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())})")
    seen: dict = {}
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(stop, seen), daemon=True)
    sampler.start()
    t0 = time.monotonic()
    tables_at = None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**env, "COLUMNS": "200"})
    for line in proc.stdout:
        now = time.monotonic() - t0
        if line.startswith("MLflow UI:"):
            tables_at = now
        print(f"{now:7.2f} {line}", end="", flush=True)
    rc = proc.wait()
    wall = time.monotonic() - t0
    stop.set()
    sampler.join()
    print(f"exit {rc}; tables printed at {tables_at and round(tables_at, 1)} s; command ended at {wall:.1f} s")
    print(f"load average after: {os.getloadavg()}")
    totals: dict = collections.defaultdict(lambda: [0.0, 0])
    for kind, start, last in seen.values():
        totals[kind][0] += last - start
        totals[kind][1] += 1
    print("\n| CPU s | processes | kind |\n|---:|---:|---|")
    for kind, (cpu, n) in sorted(totals.items(), key=lambda kv: -kv[1][0]):
        if cpu >= 1.0:
            print(f"| {cpu:.1f} | {n} | {kind} |")
    print(f"\nall processes: {sum(c for c, _ in totals.values()):.0f} CPU-s in {wall:.0f} s on {os.cpu_count()} CPUs")
    return rc


if __name__ == "__main__":
    sys.exit(main())
