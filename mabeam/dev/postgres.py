"""A private PostgreSQL server for tests, benchmarks and the dev cluster (dev tooling, never imported by a daemon).

``initdb`` in a temp dir, then a server that listens on a Unix socket in that dir
only (``listen_addresses=''``), so no TCP port is taken and nothing can race for
one. The server refuses to run as root: as root the data dir is handed to the
``postgres`` user and every command runs through ``runuser``. The binaries come
from the Debian package (``make test`` installs it when missing)::

    with DevPostgres() as pg:
        dsn = pg.create_database("t1")   # postgresql://mabeam@/t1?host=/tmp/...
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

USER = "mabeam"


def find_bindir() -> str:
    """The directory of initdb/pg_ctl/psql (the newest installed major version), or raise with the fix."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2])
                            if p.split("/")[-2].isdigit() else 0, reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return candidate
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(found)
    raise RuntimeError("PostgreSQL server binaries not found: install them with `apt-get install -y postgresql` "
                       "(make test does this when run as root)")


class DevPostgres:
    """A throwaway PostgreSQL server on a Unix socket in its own temp dir."""

    def __init__(self, fsync: bool = False) -> None:
        self.bindir = find_bindir()
        self.fsync = fsync
        self.dir = Path(tempfile.mkdtemp(prefix="mabeam-pg-"))
        self.data = self.dir / "data"
        self._as_root = os.geteuid() == 0
        self.started = False

    def _cmd(self, *args: str) -> list[str]:
        if self._as_root:
            return ["runuser", "-u", "postgres", "--", *args]
        return list(args)

    def _run(self, *args: str) -> None:
        result = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = (self.dir / "log").read_text(errors="replace")[-2000:] if (self.dir / "log").exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({result.returncode}): {result.stderr or result.stdout}"
                               f"\n{log}")

    def start(self) -> DevPostgres:
        """initdb and start the server; returns when it accepts connections."""
        if self._as_root:
            entry = pwd.getpwnam("postgres")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self._run(f"{self.bindir}/initdb", "-D", str(self.data), "-A", "trust", "-U", USER, "--no-sync",
                  "-E", "UTF8", "--locale=C")
        options = f"-k {self.dir} -c listen_addresses='' -c max_connections=200"
        if not self.fsync:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(f"{self.bindir}/pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"),
                  "-w", "-t", "60", "start")
        self.started = True
        return self

    def dsn(self, database: str = "postgres") -> str:
        """The connection URL of a database on this server (over its Unix socket)."""
        return f"postgresql://{USER}@/{database}?host={self.dir}"

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh database (a unique name by default); returns its URL."""
        name = name or f"t{uuid.uuid4().hex[:12]}"
        self._run(f"{self.bindir}/psql", "-h", str(self.dir), "-U", USER, "-d", "postgres", "-q",
                  "-c", f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def psql(self, database: str, sql: str) -> str:
        """Run SQL through psql (tests use it to tamper with rows); returns its output."""
        result = subprocess.run(self._cmd(f"{self.bindir}/psql", "-h", str(self.dir), "-U", USER, "-d", database,
                                          "-At", "-c", sql), capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr}")
        return result.stdout

    def stop(self) -> None:
        """Stop the server at once (immediate mode) and remove its directory."""
        if self.started:
            subprocess.run(self._cmd(f"{self.bindir}/pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"),
                           capture_output=True, timeout=60)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> DevPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
