"""A dev cluster on this host: embedded etcd (unless given one) and N nodes of real daemons.

Used by ``mabeam up``, the demo, the integration tests and the benchmarks, so
they all run the real daemons as separate OS processes. Each node is a meshd,
optionally with an agentd (attached to that meshd) and a coordinator.

Port plan from a base port P: embedded etcd on P (client) and P+1 (peer);
node i (1-based) uses P+10·i for meshd gRPC, +1 meshd metrics, +2 … +5 the
data plane's four channels, +6 agentd gRPC, +7 agentd metrics, +8 coordinator
gRPC; local attach is ``ipc://<run dir>/<node>.attach``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mabeam.etcd.embedded import EmbeddedEtcd


class ClusterError(RuntimeError):
    """A daemon of the dev cluster failed to start; the message carries its output."""


@dataclass
class DaemonProcess:
    """One daemon child process, its log, and whether it printed its ready line."""

    kind: str  # "meshd" | "agentd" | "coordinator"
    node_id: str
    port: int
    log_path: Path
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    exit_reported: bool = False
    #: The ``key=value`` fields of the daemon's ready line (e.g. agentd's ``http=127.0.0.1:PORT``).
    ready_fields: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        """gRPC host:port of this daemon."""
        return f"127.0.0.1:{self.port}"

    @property
    def http_endpoint(self) -> str:
        """agentd: host:port of the runs HTTP/SSE face, as its ready line reported it ("" when off)."""
        value = self.ready_fields.get("http", "0")
        return "" if value == "0" else value

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None


@dataclass
class NodeProcess(DaemonProcess):
    """A node: its meshd (this object) plus the other daemons on the same host."""

    metrics_port: int = 0
    agentd: DaemonProcess | None = None
    coordinator: DaemonProcess | None = None

    @property
    def grpc_port(self) -> int:
        """meshd's gRPC port."""
        return self.port

    @property
    def attach_address(self) -> str:
        """Where processes on this host attach to this node's data plane."""
        return f"ipc://{self.log_path.parent / (self.node_id + '.attach')}"

    @property
    def daemons(self) -> list[DaemonProcess]:
        """meshd first, then the others present on this node."""
        return [self, *(d for d in (self.agentd, self.coordinator) if d is not None)]


class DevCluster:
    """Start, inspect, fault and stop a local cluster of real daemon processes."""

    def __init__(self, nodes: int = 3, base_port: int = 7100, etcd: str | None = None, cluster: str = "dev",
                 lease_ttl: int = 3, run_dir: str | os.PathLike[str] | None = None,
                 extra_args: list[str] | None = None, agentd: bool = False, coordinator: bool = False,
                 runs_store: str = "", runs_config: dict[str, object] | None = None) -> None:
        self.base_port = base_port
        self.cluster = cluster
        self.lease_ttl = lease_ttl
        self._own_run_dir = run_dir is None
        self.run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="mabeam-dev-"))
        self.embedded: EmbeddedEtcd | None = None
        self.etcd_endpoint = etcd or ""
        self.extra_args = extra_args or []
        #: Every agentd of the cluster shares one runs store: by default one SQLite file in the run dir
        #: (any node serves any run); a postgresql:// URL for a PostgreSQL store.
        self.runs_store = runs_store or f"sqlite://{self.run_dir.resolve() / 'runs.sqlite'}"
        #: Extra ``[runs]`` settings for every agentd (lease_ttl, cancel_grace_s, ...).
        self.runs_config = dict(runs_config or {})
        self.nodes = [self._node_spec(i, agentd, coordinator) for i in range(1, nodes + 1)]

    def _node_spec(self, index: int, agentd: bool, coordinator: bool) -> NodeProcess:
        node_id = f"node-{index}"
        port = self.base_port + 10 * index
        node = NodeProcess("meshd", node_id, port, self.run_dir / f"{node_id}.log", metrics_port=port + 1)
        if agentd:
            node.agentd = DaemonProcess("agentd", node_id, port + 6, self.run_dir / f"{node_id}-agentd.log")
        if coordinator:
            node.coordinator = DaemonProcess("coordinator", node_id, port + 8,
                                             self.run_dir / f"{node_id}-coordinator.log")
        return node

    def _command(self, daemon: DaemonProcess, node: NodeProcess) -> list[str]:
        if daemon.kind == "meshd":
            return [sys.executable, "-m", "meshd", "--node-id", node.node_id, "--cluster", self.cluster,
                    "--etcd", self.etcd_endpoint, "--grpc-port", str(node.port),
                    "--metrics-port", str(node.metrics_port), "--lease-ttl", str(self.lease_ttl),
                    "--data-port", str(node.port + 2), "--attach", node.attach_address, *self.extra_args]
        if daemon.kind == "agentd":
            return [sys.executable, "-m", "agentd", "--node-id", node.node_id,
                    "--grpc-address", daemon.endpoint, "--metrics-address", f"127.0.0.1:{node.port + 7}",
                    "--meshd-attach", node.attach_address, "--data-dir", str(self.run_dir / f"{node.node_id}-agentd"),
                    "--workers", "1", "--examples", "--etcd", self.etcd_endpoint, "--cluster", self.cluster,
                    "--runs-store", self.runs_store, "--http-address", "127.0.0.1:0"]
        return [sys.executable, "-m", "coordinator", "--node-id", node.node_id, "--etcd", self.etcd_endpoint,
                "--cluster", self.cluster, "--grpc-port", str(daemon.port), "--lease-ttl", str(self.lease_ttl)]

    def start(self, timeout: float = 60.0) -> DevCluster:
        """Start etcd (if embedded) and every node's daemons; wait until each reports ready."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.etcd_endpoint:
            self.embedded = EmbeddedEtcd(data_dir=self.run_dir / "etcd", client_port=self.base_port,
                                         peer_port=self.base_port + 1)
            self.embedded.start()
            self.etcd_endpoint = self.embedded.endpoint
        deadline = time.monotonic() + timeout
        for node in self.nodes:  # meshd everywhere first: agentd attaches to it
            self._spawn(node, node)
        for node in self.nodes:
            self.wait_ready(node, max(0.1, deadline - time.monotonic()))
        for node in self.nodes:
            for daemon in node.daemons[1:]:
                self._spawn(daemon, node)
        for node in self.nodes:
            for daemon in node.daemons[1:]:
                self.wait_ready(daemon, max(0.1, deadline - time.monotonic()))
        return self

    def start_node(self, node: NodeProcess, wait: bool = True, timeout: float = 30.0) -> None:
        """(Re)start one node's daemons (meshd first)."""
        for daemon in node.daemons:
            self._spawn(daemon, node)
            if wait:
                self.wait_ready(daemon, timeout)

    def _spawn(self, daemon: DaemonProcess, node: NodeProcess) -> None:
        daemon.args = self._command(daemon, node)
        daemon.ready = threading.Event()
        daemon.exit_reported = False
        log = open(daemon.log_path, "a")  # noqa: SIM115 - handed to the reader thread, closed there
        env = None
        if daemon.kind == "agentd" and self.runs_config:
            env = {**os.environ, "AGENTD_RUNS": json.dumps(self.runs_config)}
        daemon.ready_fields = {}
        daemon.proc = subprocess.Popen(daemon.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       bufsize=1, start_new_session=True, env=env)
        threading.Thread(target=self._pump, args=(daemon, daemon.proc, log), daemon=True).start()

    @staticmethod
    def _pump(daemon: DaemonProcess, proc: subprocess.Popen[str], log: object) -> None:
        # Copy the child's output to its log file and notice the ready line.
        assert proc.stdout is not None
        prefix = f"{daemon.kind} ready"
        with log:  # type: ignore[attr-defined]
            for line in proc.stdout:
                log.write(line)  # type: ignore[attr-defined]
                log.flush()  # type: ignore[attr-defined]
                if line.startswith(prefix):
                    daemon.ready_fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
                    daemon.ready.set()

    def wait_ready(self, daemon: DaemonProcess, timeout: float) -> None:
        """Wait for the daemon's ready line, or raise ClusterError with its log."""
        deadline = time.monotonic() + timeout
        while not daemon.ready.wait(0.05):
            if not daemon.alive or time.monotonic() > deadline:
                tail = daemon.log_path.read_text(errors="replace")[-3000:] if daemon.log_path.exists() else ""
                raise ClusterError(f"{daemon.kind} of {daemon.node_id} did not become ready:\n{tail}")

    @property
    def endpoints(self) -> list[str]:
        """meshd gRPC endpoints of every node, in node order."""
        return [node.endpoint for node in self.nodes]

    def describe(self) -> dict[str, object]:
        """The cluster as plain data (``mabeam up --json``, SDK conformance runners): etcd and, per node,
        each daemon's gRPC endpoint and pid."""
        nodes = []
        for node in self.nodes:
            entry: dict[str, object] = {"node_id": node.node_id, "meshd": node.endpoint,
                                        "meshd_pid": node.proc.pid if node.proc else 0,
                                        "attach": node.attach_address}
            for daemon in node.daemons[1:]:
                entry[daemon.kind] = daemon.endpoint
                entry[f"{daemon.kind}_pid"] = daemon.proc.pid if daemon.proc else 0
                if daemon.http_endpoint:
                    entry[f"{daemon.kind}_http"] = daemon.http_endpoint
            nodes.append(entry)
        return {"etcd": self.etcd_endpoint, "cluster": self.cluster, "nodes": nodes}

    def restart_dead(self, timeout: float = 30.0) -> list[str]:
        """Start again every daemon that is not running (meshd first); the ones restarted, as "kind@node"."""
        restarted = []
        for tier in (lambda n: [n], lambda n: n.daemons[1:]):
            for node in self.nodes:
                for daemon in tier(node):
                    if not daemon.alive:
                        self._spawn(daemon, node)
                        self.wait_ready(daemon, timeout)
                        restarted.append(f"{daemon.kind}@{node.node_id}")
        return restarted

    def kill(self, index: int) -> None:
        """kill -9 every daemon of node `index` (0-based), as a host dying would; meshd leaves at lease expiry."""
        for daemon in self.nodes[index].daemons:
            if daemon.proc is not None and daemon.alive:
                daemon.proc.kill()
                daemon.proc.wait()

    def terminate(self, index: int, timeout: float = 10.0) -> int | None:
        """SIGTERM node `index`'s daemons (meshd last) and wait; returns meshd's exit code."""
        node = self.nodes[index]
        for daemon in reversed(node.daemons):
            self._terminate(daemon, timeout)
        return node.proc.returncode if node.proc is not None else None

    def kill_daemon(self, daemon: DaemonProcess) -> None:
        """kill -9 one daemon (e.g. a node's agentd), leaving the rest of its node running."""
        if daemon.proc is not None and daemon.alive:
            daemon.proc.kill()
            daemon.proc.wait()

    def restart_daemon(self, daemon: DaemonProcess, timeout: float = 60.0) -> None:
        """Start one daemon again (after ``kill_daemon``) and wait for its ready line.

        A restarted agentd may be refused by its meshd while meshd still holds the killed
        incarnation's attachment (until it expires, a few seconds): it is started again until ready.
        """
        node = next(n for n in self.nodes if daemon in n.daemons)
        deadline = time.monotonic() + timeout
        while True:
            self._spawn(daemon, node)
            try:
                self.wait_ready(daemon, max(0.1, deadline - time.monotonic()))
                return
            except ClusterError:
                if daemon.alive or time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    @staticmethod
    def _terminate(daemon: DaemonProcess, timeout: float) -> None:
        if daemon.proc is None:
            return
        if daemon.alive:
            daemon.proc.send_signal(signal.SIGTERM)
        try:
            daemon.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.proc.wait()

    def stop(self) -> None:
        """Stop every daemon (SIGTERM, then SIGKILL; agentd and coordinator before meshd) and the embedded etcd."""
        for tier in (lambda n: n.daemons[1:], lambda n: [n]):
            daemons = [d for node in self.nodes for d in tier(node)]
            for daemon in daemons:
                if daemon.alive:
                    daemon.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            for daemon in daemons:
                self._terminate(daemon, 10.0)
        if self.embedded is not None:
            self.embedded.stop()

    def close(self) -> None:
        """Stop everything and remove the embedded etcd's data (and the run dir if it was temporary)."""
        self.stop()
        if self.embedded is not None:
            self.embedded.close()
        if self._own_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> DevCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
