"""Real coordinator processes for tests and benchmarks: start, find the leader, kill, pause, stop.

Each process is ``python -m coordinator`` on a free loopback port; ``start``
waits for its ``coordinator ready`` line (no sleeps). Output goes to a log
file per process, shown in the error when a process fails to start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mabeam.dev.testing import free_port_block, wait_until


@dataclass
class CoordinatorProcess:
    """One coordinator child process."""

    node_id: str
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """gRPC host:port."""
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        """Everything the process printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        """Send a signal (SIGKILL, SIGSTOP, SIGCONT, SIGTERM)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)


class CoordinatorCluster:
    """N coordinator processes of one cluster on one etcd (no meshd needed)."""

    def __init__(self, etcd: str, cluster: str, nodes: int = 2, lease_ttl: int = 2,
                 run_dir: str | None = None) -> None:
        self.etcd = etcd
        self.cluster = cluster
        self.lease_ttl = lease_ttl
        self.run_dir = Path(run_dir or tempfile.mkdtemp(prefix="mabeam-coord-"))
        base = free_port_block(nodes)
        self.nodes = [CoordinatorProcess(f"coord-{i + 1}", base + i, self.run_dir / f"coord-{i + 1}.log")
                      for i in range(nodes)]

    @property
    def endpoints(self) -> list[str]:
        """Every node's gRPC address."""
        return [n.endpoint for n in self.nodes]

    def start_node(self, node: CoordinatorProcess) -> None:
        """Start (or restart) one node without waiting."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        args = [sys.executable, "-m", "coordinator", "--node-id", node.node_id, "--etcd", self.etcd,
                "--cluster", self.cluster, "--grpc-port", str(node.port), "--lease-ttl", str(self.lease_ttl)]
        with open(node.log_path, "ab") as log:
            node.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=Path(__file__).resolve().parent.parent)

    def wait_ready(self, node: CoordinatorProcess, timeout: float = 30.0) -> None:
        """Wait for the node's ready line (fails with its output if it exits first)."""
        marker = f"coordinator ready node_id={node.node_id}"

        deadline = time.monotonic() + timeout
        while marker not in node.output():
            if not node.alive:
                raise AssertionError(f"{node.node_id} exited:\n{node.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{node.node_id} not ready within {timeout}s:\n{node.output()[-3000:]}")
            time.sleep(0.02)

    def start(self, timeout: float = 30.0) -> CoordinatorCluster:
        """Start every node, the first one first (so it leads), and wait until all are ready."""
        self.start_node(self.nodes[0])
        self.wait_ready(self.nodes[0], timeout)
        for node in self.nodes[1:]:
            self.start_node(node)
        for node in self.nodes[1:]:
            self.wait_ready(node, timeout)
        return self

    def leader(self, timeout: float = 10.0, exclude: CoordinatorProcess | None = None) -> CoordinatorProcess:
        """The node that leads (asks each live node through the SDK), waiting up to ``timeout``."""
        from mabeam_client.coordinator import SyncCoordinatorClient

        def probe() -> CoordinatorProcess | None:
            for node in self.nodes:
                if node is exclude or not node.alive:
                    continue
                client = SyncCoordinatorClient(node.endpoint, timeout=1.0, failover_timeout=0.0)
                try:
                    if client.leader().is_leader:
                        return node
                finally:
                    client.close()
            return None

        return wait_until(probe, timeout, 0.05, "a coordinator leads")

    def close(self) -> None:
        """Stop every node (SIGCONT first, in case a test paused one)."""
        for node in self.nodes:
            if node.alive:
                node.signal(signal.SIGCONT)
                node.signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                node.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(5)
