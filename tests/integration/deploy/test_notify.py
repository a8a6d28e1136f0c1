"""Each daemon speaks sd_notify: READY=1 only once it serves, STATUS= lines, WATCHDOG=1 from its event loop
(stopping while the loop is blocked), STOPPING=1 on SIGTERM -- all from the main process.

Daemons run from the dev command line here, on loopback with a fake NOTIFY_SOCKET; tests/hosts/ runs
the same checks with exactly the units' commands as an unprivileged user.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mabeam.dev.notify import NotifySocket, watchdog_gap_while_blocked
from mabeam.dev.testing import wait_until
from mabeam.startup import parse_ready_line

WATCHDOG_USEC = 1_000_000  # WatchdogSec=1s: a ping every 0.5 s
BLOCK_S = 3.0  # the debug signal blocks the loop this long: past WatchdogSec, so systemd would kill it


class Daemon:
    """A daemon process with its notify socket and its stdout collected."""

    def __init__(self, argv: list[str], notify: NotifySocket, log: Path) -> None:
        env = dict(os.environ, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC=str(WATCHDOG_USEC),
                   MABEAM_DEBUG_BLOCK_LOOP=str(BLOCK_S))
        self.notify = notify
        self.log = log
        self.lines: list[str] = []
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("w") as out:
            for line in self.proc.stdout:
                self.lines.append(line)
                out.write(line)
                out.flush()

    def ready_line(self, kind: str) -> str:
        # Printed just before READY=1, but read from the pipe by another thread: wait for it.
        return wait_until(lambda: next((line for line in self.lines if line.startswith(f"{kind} ready")), None),
                          10, what=f"{kind}'s ready line")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator:
    started: list[Daemon] = []
    sockets: list[NotifySocket] = []

    def make(name: str, argv: list[str]) -> Daemon:
        notify = NotifySocket(tmp_path / f"{name}.notify")
        sockets.append(notify)
        daemon = Daemon(argv, notify, tmp_path / f"{name}.log")
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()
    for notify in sockets:
        notify.close()


def health(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def check_lifecycle(daemon: Daemon, kind: str, service: str, status_words: list[str],
                    later_status: str | None = None) -> None:
    """READY once serving, STATUS, watchdog pings that stop while the loop is blocked, STOPPING on SIGTERM."""
    ready = daemon.notify.wait_for("READY", "1", timeout=60)
    parsed = parse_ready_line(daemon.ready_line(kind))  # printed just before READY=1
    assert parsed is not None
    address = str(parsed.fields["grpc"])
    assert health(address) == health_pb2.HealthCheckResponse.SERVING
    assert health(address, service) == health_pb2.HealthCheckResponse.SERVING
    status = ready.fields.get("STATUS", "")
    assert all(word in status for word in status_words), status
    assert ready.pid == daemon.proc.pid  # NotifyAccess=main: only the main process speaks
    if later_status is not None:  # STATUS= follows the daemon's state
        assert later_status in daemon.notify.wait_for("STATUS", later_status, timeout=10).fields["STATUS"]

    # The watchdog keeps coming while healthy...
    first = daemon.notify.wait_for("WATCHDOG", "1", after=ready.at, timeout=10)
    daemon.notify.wait_for("WATCHDOG", "1", after=first.at + 1.0, timeout=10)
    # ...and stops while the event loop is blocked (the debug signal sleeps on the loop).
    gap = watchdog_gap_while_blocked(daemon.notify, lambda: daemon.proc.send_signal(signal.SIGUSR2), BLOCK_S)
    assert gap >= BLOCK_S - 0.5, f"the watchdog kept pinging while the loop was blocked (longest gap {gap:.2f}s)"
    assert all(m.pid == daemon.proc.pid for m in daemon.notify.messages)

    assert daemon.stop() == 0
    assert daemon.notify.with_field("STOPPING", "1")


def test_meshd_notifies_systemd(spawn, etcd_server, cluster_name: str, tmp_path: Path) -> None:
    daemon = spawn("meshd", [sys.executable, "-m", "meshd", "--node-id", "n1", "--cluster", cluster_name,
                             "--etcd", etcd_server.endpoint, "--grpc-port", "0", "--metrics-port", "0",
                             "--lease-ttl", "2", "--attach", f"ipc://{tmp_path}/n1.attach"])
    check_lifecycle(daemon, "meshd", "mabeam.v1.MeshService", ["1 members", "mesh leader", "etcd connected"],
                    later_status="1 members, mesh leader n1, 0 names, 0 local endpoints, etcd connected")


def test_agentd_notifies_systemd_once_attached(spawn, etcd_server, cluster_name: str, tmp_path: Path) -> None:
    attach = f"ipc://{tmp_path}/n1.attach"
    meshd = spawn("meshd", [sys.executable, "-m", "meshd", "--node-id", "n1", "--cluster", cluster_name,
                            "--etcd", etcd_server.endpoint, "--grpc-port", "0", "--metrics-port", "0",
                            "--lease-ttl", "2", "--attach", attach])
    meshd.notify.wait_for("READY", "1", timeout=60)
    daemon = spawn("agentd", [sys.executable, "-m", "agentd", "--node-id", "n1", "--grpc-address", "127.0.0.1:0",
                              "--workers", "1", "--data-dir", str(tmp_path / "agentd"), "--meshd-attach", attach])
    check_lifecycle(daemon, "agentd", "mabeam.v1.AgentService", ["agents on 1/1 workers", "attached to meshd"])


def test_coordinator_notifies_systemd_as_leader_and_as_standby(spawn, etcd_server, cluster_name: str) -> None:
    def coordinator(node: str) -> Daemon:
        return spawn(node, [sys.executable, "-m", "coordinator", "--node-id", node, "--cluster", cluster_name,
                            "--etcd", etcd_server.endpoint, "--grpc-port", "0", "--lease-ttl", "2"])

    leader = coordinator("c1")
    leader.notify.wait_for("READY", "1", timeout=60)
    standby = coordinator("c2")
    ready = standby.notify.wait_for("READY", "1", timeout=60)
    assert ready.fields["STATUS"].startswith("standby")
    check_lifecycle(leader, "coordinator", "mabeam.v1.CoordinatorService", ["leader, term", "open instances"])


def test_a_watchdog_kill_leaves_the_hung_stack_in_the_log(spawn, etcd_server, cluster_name: str,
                                                         tmp_path: Path) -> None:
    """systemd kills a daemon whose pings stopped with SIGABRT: the log shows where its loop hung."""
    daemon = spawn("meshd", [sys.executable, "-m", "meshd", "--node-id", "n1", "--cluster", cluster_name,
                             "--etcd", etcd_server.endpoint, "--grpc-port", "0", "--metrics-port", "0",
                             "--lease-ttl", "2", "--attach", f"ipc://{tmp_path}/n1.attach"])
    ready = daemon.notify.wait_for("READY", "1", timeout=60)
    daemon.notify.wait_for("WATCHDOG", "1", after=ready.at, timeout=10)
    daemon.proc.send_signal(signal.SIGUSR2)  # the loop now sleeps BLOCK_S
    wait_until(lambda: any("blocking the event loop" in line for line in daemon.lines), 10, what="the block began")
    daemon.proc.send_signal(signal.SIGABRT)  # what WatchdogSec does to a silent daemon
    assert daemon.proc.wait(30) == -signal.SIGABRT
    wait_until(lambda: any(line.strip().startswith('File "') and "in block" in line for line in daemon.lines), 10,
               what="faulthandler's stack with the blocking frame")
