"""Daemon processes of the bed: started inside a host's namespace, watched for readiness, faulted.

Each daemon runs in its own process group (``start_new_session``), and faults
go to the whole group, as systemd's control group would take a service and
its children (agentd's workers) together. Every start, ready, pause, resume
and end is recorded with wall-clock times (:class:`Incarnation`), which the
invariant checks use to tell what one incarnation acknowledged.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from mabeam.dev.hostbed.launch import LaunchSpec


class DaemonStartError(RuntimeError):
    """A daemon exited or stayed silent instead of reporting ready; the message has its log's tail."""


@dataclass
class Incarnation:
    """One run of a daemon process: when it started, became ready and ended (wall clock, seconds)."""

    pid: int
    started: float
    ready: float | None = None
    ended: float | None = None


@dataclass
class Daemon:
    """One daemon of one host."""

    host: str
    kind: str
    log_path: Path
    exec_prefix: list[str]
    spec: LaunchSpec | None = None
    proc: subprocess.Popen[str] | None = None
    incarnations: list[Incarnation] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)

    @property
    def alive(self) -> bool:
        """True while the process runs (paused counts as running)."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The current process id, or None."""
        return self.proc.pid if self.alive and self.proc is not None else None

    def start(self, spec: LaunchSpec) -> None:
        """Write the spec's files and start the command in the host's namespace (does not wait)."""
        if self.alive:
            raise RuntimeError(f"{self.kind} on {self.host} is already running")
        self.spec = spec
        for path, text in spec.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1",
               **spec.env}
        self._ready = threading.Event()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "a")  # noqa: SIM115 - handed to the reader thread, closed there
        log.write(f"--- {time.strftime('%H:%M:%S')} start: {' '.join(spec.argv)}\n")
        self.proc = subprocess.Popen([*self.exec_prefix, *spec.argv], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1,
                                     env=env, start_new_session=True)
        incarnation = Incarnation(self.proc.pid, time.time())
        self.incarnations.append(incarnation)
        threading.Thread(target=self._pump, args=(self.proc, log, incarnation, spec.ready_line),
                         name=f"log-{self.host}-{self.kind}", daemon=True).start()

    def _pump(self, proc: subprocess.Popen[str], log: IO[str], incarnation: Incarnation, ready_line: str) -> None:
        # Copy the daemon's output to its log and notice its ready line.
        assert proc.stdout is not None
        with log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if ready_line and incarnation.ready is None and line.startswith(ready_line):
                    incarnation.ready = time.time()
                    self._ready.set()
            proc.wait()
            if incarnation.ended is None:
                incarnation.ended = time.time()
            log.write(f"--- {time.strftime('%H:%M:%S')} exited with {proc.returncode}\n")

    def wait_ready(self, timeout: float) -> None:
        """Wait for the ready line; DaemonStartError with the log's tail if it exits or times out."""
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if not self.alive or time.monotonic() > deadline:
                why = "exited" if not self.alive else f"was not ready within {timeout:.0f}s"
                raise DaemonStartError(f"{self.kind} on {self.host} {why}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the daemon's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal to the daemon's process group."""
        if self.proc is None or not self.alive:
            raise RuntimeError(f"{self.kind} on {self.host} is not running")
        os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """kill -9 the daemon (and its process group) and reap it."""
        if self.proc is None or not self.alive:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.incarnations[-1].ended = self.incarnations[-1].ended or time.time()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (and SIGCONT, in case it is paused), then SIGKILL after ``timeout``."""
        self.terminate()
        self.wait_stopped(time.monotonic() + timeout)

    def kill_nowait(self) -> None:
        """kill -9 the daemon's process group; does not wait (see :meth:`wait_stopped`)."""
        if self.proc is None or not self.alive:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def terminate(self) -> None:
        """Ask the daemon to stop (SIGTERM, and SIGCONT in case it is paused); does not wait."""
        if self.proc is None or not self.alive:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
            os.killpg(self.proc.pid, signal.SIGCONT)

    def wait_stopped(self, deadline: float) -> None:
        """Wait until the daemon exited (SIGKILL at ``deadline``, a time.monotonic() value), then kill what is
        left of its process group (workers)."""
        if self.proc is None:
            return
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.incarnations:
            self.incarnations[-1].ended = self.incarnations[-1].ended or time.time()
