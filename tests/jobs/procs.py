"""This test process's own descendants, read from /proc: which Ray worker processes are ours and what they run.

Ray names a worker process by what it runs (setproctitle: ``ray::ImplicitFunc.train``, ``ray::RayTrainWorker...``),
so a trial's process is found here in milliseconds. Ray's state API (``list_actors``) answers the same question
through the GCS and the dashboard, which on a loaded 2-core CI machine took longer than a 15-second trial lived.
"""
from __future__ import annotations

import os


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(root: int | None = None) -> list[int]:
    """Every live process below ``root`` (default: this process), parents before children."""
    children = _children_map()
    out, todo = [], [root or os.getpid()]
    while todo:
        kids = sorted(children.get(todo.pop(0), []))
        out += kids
        todo += kids
    return out


def descendants_running(title: str, root: int | None = None) -> list[int]:
    """The descendants whose command line (a Ray worker's process title) contains ``title``, oldest pid first."""
    return [p for p in descendants(root) if title in cmdline(p)]
