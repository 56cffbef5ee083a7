"""A throwaway PostgreSQL server for the tests: Debian's binaries, a fresh cluster in /tmp,
reached over a Unix socket only. CI installs the `postgresql` package; the tests start and
stop their own server, so nothing else needs configuring."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid


def binaries() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root: run them as the postgres user the package made
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class Server:
    def __init__(self):
        bindir = binaries()
        if bindir is None:
            raise FileNotFoundError("no PostgreSQL server binaries (apt-get install postgresql)")
        self.bindir = bindir
        self.root = tempfile.mkdtemp(prefix="sae-pg-")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.data = os.path.join(self.root, "data")
        self.port = 5432 + os.getpid() % 1000 + 1000
        subprocess.run(
            _as_postgres([f"{bindir}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync"]),
            check=True,
            capture_output=True,
        )
        opts = f"-k {self.root} -p {self.port} -c listen_addresses='' -c fsync=on -c max_connections=200"
        subprocess.run(
            _as_postgres([f"{bindir}/pg_ctl", "-D", self.data, "-o", opts, "-l", f"{self.root}/log", "-w", "start"]),
            check=True,
            capture_output=True,
        )
        self.admin = self.url("postgres")

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@/{dbname}?host={self.root}&port={self.port}"

    def new_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.admin, autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            _as_postgres([f"{self.bindir}/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"]),
            capture_output=True,
        )
        time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)
