"""A dev cluster on this host: embedded etcd (unless given one) and N meshd processes.

Used by ``mabeam up``, the demo, the integration tests and the benchmarks, so
they all run the real daemons as separate OS processes. Port plan from a base
port P: embedded etcd on P (client) and P+1 (peer); node i (1-based) serves
gRPC on P+10·i, metrics on P+10·i+1, the data plane's four channels on
P+10·i+2 … P+10·i+5, and local attach on ``ipc://<run dir>/<node>.attach``.
"""

from __future__ import annotations

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
class NodeProcess:
    """One meshd child process and what it printed."""

    node_id: str
    grpc_port: int
    metrics_port: int
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[str] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    exit_reported: bool = False

    @property
    def endpoint(self) -> str:
        """gRPC host:port of this node's meshd."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def attach_address(self) -> str:
        """Where processes on this host attach to this node's data plane."""
        return f"ipc://{self.log_path.parent / (self.node_id + '.attach')}"

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None


class DevCluster:
    """Start, inspect, fault and stop a local cluster of real meshd processes."""

    def __init__(self, nodes: int = 3, base_port: int = 7100, etcd: str | None = None, cluster: str = "dev",
                 lease_ttl: int = 3, run_dir: str | os.PathLike[str] | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.base_port = base_port
        self.cluster = cluster
        self.lease_ttl = lease_ttl
        self._own_run_dir = run_dir is None
        self.run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="mabeam-dev-"))
        self.embedded: EmbeddedEtcd | None = None
        self.etcd_endpoint = etcd or ""
        self.extra_args = extra_args or []
        self.nodes = [self._node_spec(i) for i in range(1, nodes + 1)]

    def _node_spec(self, index: int) -> NodeProcess:
        node_id = f"node-{index}"
        grpc_port = self.base_port + 10 * index
        return NodeProcess(node_id, grpc_port, grpc_port + 1, [], self.run_dir / f"{node_id}.log")

    def start(self, timeout: float = 30.0) -> DevCluster:
        """Start etcd (if embedded) and every meshd; wait until each reports ready."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.etcd_endpoint:
            self.embedded = EmbeddedEtcd(data_dir=self.run_dir / "etcd", client_port=self.base_port,
                                         peer_port=self.base_port + 1)
            self.embedded.start()
            self.etcd_endpoint = self.embedded.endpoint
        for node in self.nodes:
            self.start_node(node, wait=False)
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            self.wait_ready(node, max(0.1, deadline - time.monotonic()))
        return self

    def start_node(self, node: NodeProcess, wait: bool = True, timeout: float = 30.0) -> None:
        """(Re)start one node's meshd."""
        node.args = [
            sys.executable, "-m", "meshd", "--node-id", node.node_id, "--cluster", self.cluster,
            "--etcd", self.etcd_endpoint, "--grpc-port", str(node.grpc_port),
            "--metrics-port", str(node.metrics_port), "--lease-ttl", str(self.lease_ttl),
            "--data-port", str(node.grpc_port + 2), "--attach", node.attach_address, *self.extra_args,
        ]
        node.ready = threading.Event()
        node.exit_reported = False
        log = open(node.log_path, "a")  # noqa: SIM115 - handed to the reader thread, closed there
        node.proc = subprocess.Popen(node.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     bufsize=1, start_new_session=True)
        threading.Thread(target=self._pump, args=(node, node.proc, log), daemon=True).start()
        if wait:
            self.wait_ready(node, timeout)

    @staticmethod
    def _pump(node: NodeProcess, proc: subprocess.Popen[str], log: object) -> None:
        # Copy the child's output to its log file and notice the ready line.
        assert proc.stdout is not None
        with log:  # type: ignore[attr-defined]
            for line in proc.stdout:
                log.write(line)  # type: ignore[attr-defined]
                log.flush()  # type: ignore[attr-defined]
                if line.startswith("meshd ready"):
                    node.ready.set()

    def wait_ready(self, node: NodeProcess, timeout: float) -> None:
        """Wait for the node's ready line, or raise ClusterError with its log."""
        deadline = time.monotonic() + timeout
        while not node.ready.wait(0.05):
            if not node.alive or time.monotonic() > deadline:
                tail = node.log_path.read_text(errors="replace")[-2000:] if node.log_path.exists() else ""
                raise ClusterError(f"{node.node_id} did not become ready:\n{tail}")

    @property
    def endpoints(self) -> list[str]:
        """gRPC endpoints of every node, in node order."""
        return [node.endpoint for node in self.nodes]

    def kill(self, index: int) -> None:
        """kill -9 node `index` (0-based): it leaves only when its lease expires."""
        node = self.nodes[index]
        if node.proc is not None and node.alive:
            node.proc.kill()
            node.proc.wait()

    def terminate(self, index: int, timeout: float = 10.0) -> int | None:
        """SIGTERM node `index` (0-based) and wait; it revokes its lease and leaves at once."""
        node = self.nodes[index]
        if node.proc is None:
            return None
        if node.alive:
            node.proc.send_signal(signal.SIGTERM)
        try:
            return node.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            return node.proc.wait()

    def stop(self) -> None:
        """Stop every meshd (SIGTERM, then SIGKILL) and the embedded etcd."""
        for node in self.nodes:
            if node.alive:
                node.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        for index in range(len(self.nodes)):
            self.terminate(index)
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
