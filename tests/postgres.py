"""A private PostgreSQL server for the tests (initdb + pg_ctl in a temp dir), stopped by its own data dir.

Only the tests and CI start one: the embedded stack uses SQLite, a deployment its own PostgreSQL."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from console.stack import free_port

PG_BIN = Path(os.environ.get("SIBNN_PG_BIN", "/usr/lib/postgresql/15/bin"))


@dataclass
class Postgres:
    data_dir: Path
    port: int
    run_as: str | None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str) -> None:
        full = ["runuser", "-u", self.run_as, "--", *cmd] if self.run_as else list(cmd)
        subprocess.run(full, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)

    def stop(self) -> None:
        try:
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir / "data"), "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.data_dir, ignore_errors=True)


def start_postgres(port: int | None = None) -> Postgres:
    """A private PostgreSQL cluster in a temp dir (initdb + pg_ctl, trust auth on 127.0.0.1, fsync off): under a
    second. As root it runs as the ``postgres`` OS user (PostgreSQL refuses to run as root)."""
    if not (PG_BIN / "initdb").exists():
        raise FileNotFoundError(f"PostgreSQL server binaries not found in {PG_BIN} (set SIBNN_PG_BIN)")
    port = port or free_port()
    d = Path(tempfile.mkdtemp(prefix="sibnn-pg-"))
    run_as = "postgres" if os.geteuid() == 0 else None
    if run_as:
        shutil.chown(d, run_as)
    pg = Postgres(d, port, run_as)
    pg._run(str(PG_BIN / "initdb"), "-U", "postgres", "-A", "trust", "--no-sync", "-D", str(d / "data"))
    pg._run(str(PG_BIN / "pg_ctl"), "-D", str(d / "data"), "-l", str(d / "log"), "-w", "-o",
            f"-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off", "start")
    return pg
