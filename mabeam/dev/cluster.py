"""The dev cluster: the one harness that runs real mabeam daemons as OS processes on this host.

Used by ``mabeam up``, the demo, the tests and the benchmarks. A cluster is an
etcd (embedded unless one is given) and N nodes; each node runs any of meshd,
agentd (attached to that node's meshd) and coordinator::

    with DevCluster(nodes=3, agentd=True) as cluster:        # meshd + agentd per node
        cluster.nodes[0].endpoint                            # node-1's meshd gRPC host:port
        cluster.nodes[2].meshd.pause(); ...; cluster.nodes[2].meshd.resume()
    with DevCluster(nodes=2, meshd=False, coordinator=True) as cluster:
        leader = cluster.leader()                            # the coordinator that leads

**Ports.** By default every daemon binds port 0 and the harness reads the
addresses it actually bound from its ready line (:mod:`mabeam.startup`), so no
port is ever chosen free here and bound later by another process. The embedded
etcd, which cannot report a port-0 bind, picks its ports itself and retries on
"address already in use" (:mod:`mabeam.etcd.embedded`). ``base_port=P`` gives
fixed ports instead (``mabeam up --base-port P``): etcd on P (client) and P+1
(peer); node i (1-based) uses P+10·i for meshd gRPC, +1 meshd metrics, +2 … +5
the data plane's four channels, +6 agentd gRPC, +7 agentd metrics, +8
coordinator gRPC, +9 coordinator metrics. Local attach is always ``ipc://<run dir>/<node>.attach``. A
daemon restarted (:meth:`DevCluster.restart`, ``start_node``) binds the gRPC and
metrics ports it had, as a daemon restarted on its host binds its configured
port, so clients holding the address reconnect. Between a kill (or terminate) and
that restart the harness keeps each of those ports bound (SO_REUSEADDR, not
listening): the kernel never hands a bound port to an outgoing connection as its
ephemeral source port, which it otherwise may do with any port the dead daemon
left — the restarted daemon's bind then failed with "address already in use".

Each daemon's output goes to ``<run dir>/<node>[-kind].log``, shown in the
error when a daemon fails to start. Dev tooling: never imported by a daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mabeam.dev.security import DevSecurity
from mabeam.dev.testing import slow, wait_until
from mabeam.etcd.embedded import EmbeddedEtcd
from mabeam.startup import parse_ready_line

KINDS = ("meshd", "agentd", "coordinator")
#: Offsets from a node's base port when fixed ports are used (see the module docstring).
_OFFSETS: dict[str, int | None] = {"meshd": 0, "meshd_metrics": 1, "data": 2, "agentd": 6, "agentd_metrics": 7,
                                   "coordinator": 8, "coordinator_metrics": 9, "agentd_http": None}


class ClusterError(RuntimeError):
    """A daemon of the dev cluster failed to start; the message carries the tail of its log."""


@dataclass
class DaemonProcess:
    """One daemon child process: its command, log, ready line and the addresses it reported."""

    kind: str  # "meshd" | "agentd" | "coordinator"
    node_id: str
    log_path: Path
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    #: The fields of the daemon's ready line (``grpc``, ``metrics``, ``attach``, ``data``, ``pid`` ...).
    info: dict[str, Any] = field(default_factory=dict)
    exit_reported: bool = False
    paused: bool = False
    #: Sockets keeping the ports of a stopped daemon bound until it is restarted (see the module docstring).
    held: list[socket.socket] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        """The gRPC host:port this daemon reported (empty before it is ready)."""
        return str(self.info.get("grpc") or "")

    @property
    def metrics_address(self) -> str:
        """The /metrics host:port this daemon reported (empty when disabled or not ready)."""
        return str(self.info.get("metrics") or "")

    @property
    def http_endpoint(self) -> str:
        """agentd: host:port of the runs HTTP/SSE face, as its ready line reported it ("" when off)."""
        return str(self.info.get("http") or "")

    @property
    def pid(self) -> int | None:
        """The process id while the process exists."""
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        """True while the process runs (a paused process is alive)."""
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        """Everything the process printed so far (its log file)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        """Send a signal if the process runs (SIGKILL, SIGTERM, SIGSTOP, SIGCONT, ...)."""
        if self.alive:
            assert self.proc is not None
            os.kill(self.proc.pid, sig)
            if sig == signal.SIGSTOP:
                self.paused = True
            elif sig == signal.SIGCONT:
                self.paused = False

    def pause(self) -> None:
        """SIGSTOP: the process freezes (a GC pause, a VM migration) until :meth:`resume`."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self.signal(signal.SIGCONT)

    def kill(self) -> None:
        """kill -9 and reap (keeping its gRPC, metrics and HTTP ports bound for a restart)."""
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()
            self.hold_ports()

    def hold_ports(self) -> None:
        """Keep the gRPC, metrics and HTTP ports this (stopped) daemon had bound until :meth:`release_ports`.

        A bound, non-listening socket with SO_REUSEADDR lets the restarted daemon bind and listen on the
        port (gRPC and uvicorn set SO_REUSEADDR) while no outgoing connection can take it meanwhile.
        """
        for key in ("grpc", "metrics", "http"):
            address = str(self.info.get(key) or "")
            host, _, port = address.rpartition(":")
            if not port.isdigit() or not host:
                continue
            host = host.strip("[]")
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, int(port)))
            except OSError:  # taken already: a restart on it will say so
                sock.close()
                continue
            self.held.append(sock)

    def release_ports(self) -> None:
        """Close the sockets :meth:`hold_ports` keeps (once the restarted daemon has bound, or at the end)."""
        while self.held:
            self.held.pop().close()

    def terminate(self, timeout: float = 10.0, send: bool = True) -> int | None:
        """SIGTERM (after SIGCONT, in case it is paused), wait up to ``timeout``, then SIGKILL; the exit code.

        ``send=False`` only waits (the caller already sent SIGTERM to several processes at once).
        """
        if self.proc is None:
            return None
        if send and self.alive:
            if self.paused:
                self.resume()
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not self.held:
            self.hold_ports()
        return self.proc.returncode


@dataclass
class Node:
    """One node (host) of the dev cluster: the daemons it runs."""

    node_id: str
    run_dir: Path
    base_port: int | None = None
    meshd: DaemonProcess | None = None
    agentd: DaemonProcess | None = None
    coordinator: DaemonProcess | None = None

    @property
    def daemons(self) -> list[DaemonProcess]:
        """meshd first, then the others present on this node."""
        return [d for d in (self.meshd, self.agentd, self.coordinator) if d is not None]

    def _meshd(self) -> DaemonProcess:
        if self.meshd is None:
            raise AttributeError(f"{self.node_id} runs no meshd (in a coordinators-only cluster use "
                                 "cluster.coordinators and cluster.coordinator_endpoints)")
        return self.meshd

    @property
    def endpoint(self) -> str:
        """meshd's gRPC host:port."""
        return self._meshd().endpoint

    @property
    def metrics_address(self) -> str:
        """meshd's /metrics host:port."""
        return self._meshd().metrics_address

    @property
    def attach_address(self) -> str:
        """Where processes on this host attach to this node's data plane."""
        return f"ipc://{self.run_dir / (self.node_id + '.attach')}"

    @property
    def proc(self) -> subprocess.Popen[str] | None:
        """meshd's process."""
        return self._meshd().proc

    def port(self, what: str) -> int:
        """The port to pass for ``what`` (see ``_OFFSETS``): fixed from the base port, else 0 (the runs HTTP
        face has no fixed offset: always 0, the bound port is in agentd's ready line)."""
        offset = _OFFSETS[what]
        return 0 if self.base_port is None or offset is None else self.base_port + offset


class DevCluster:
    """Start, inspect, fault and stop a local cluster of real daemon processes (see the module docstring)."""

    def __init__(self, nodes: int = 3, base_port: int | None = None, etcd: str | None = None, cluster: str = "dev",
                 lease_ttl: int = 3, run_dir: str | os.PathLike[str] | None = None,
                 extra_args: list[str] | None = None, agentd: bool = False, coordinator: bool = False,
                 meshd: bool = True, node_prefix: str = "node-", runs_store: str = "",
                 runs_config: dict[str, object] | None = None, secure: bool = False,
                 env: dict[str, str] | None = None) -> None:
        if agentd and not meshd:
            raise ValueError("agentd attaches to its node's meshd: agentd=True needs meshd=True")
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
        #: Extra environment for every daemon (``AGENTD_MODELS``, ...): theirs, not this process's.
        self.env = dict(env or {})
        self.nodes = [self._node_spec(f"{node_prefix}{i}", None if base_port is None else base_port + 10 * i,
                                      meshd, agentd, coordinator) for i in range(1, nodes + 1)]
        #: With ``secure``: token keys, mTLS certificates and CURVE on every daemon (docs/security.md).
        self.security: DevSecurity | None = None
        if secure:
            self.security = DevSecurity(self.run_dir / "security", cluster, [n.node_id for n in self.nodes])

    def _node_spec(self, node_id: str, base: int | None, meshd: bool, agentd: bool, coordinator: bool) -> Node:
        node = Node(node_id, self.run_dir, base)
        suffix = {"meshd": "", "agentd": "-agentd", "coordinator": "-coordinator"}
        for kind, wanted in (("meshd", meshd), ("agentd", agentd), ("coordinator", coordinator)):
            if wanted:
                setattr(node, kind, DaemonProcess(kind, node_id, self.run_dir / f"{node_id}{suffix[kind]}.log"))
        return node

    def _command(self, daemon: DaemonProcess, node: Node, previous: dict[str, Any]) -> list[str]:
        def port(what: str, reported: str) -> int:
            # A restart binds what the daemon had (as a daemon restarted on a host binds its configured port).
            address = previous.get(reported)
            return int(str(address).rsplit(":", 1)[1]) if address else node.port(what)

        secure = self.security.daemon_flags(node.node_id) if self.security is not None else []
        if daemon.kind == "meshd":
            return [sys.executable, "-m", "meshd", "--node-id", node.node_id, "--cluster", self.cluster,
                    "--etcd", self.etcd_endpoint, "--grpc-port", str(port("meshd", "grpc")),
                    "--metrics-port", str(port("meshd_metrics", "metrics")), "--lease-ttl", str(self.lease_ttl),
                    "--data-port", str(node.port("data")), "--attach", node.attach_address, *self.extra_args,
                    *secure, *(["--curve"] if self.security is not None else [])]
        if daemon.kind == "agentd":
            return [sys.executable, "-m", "agentd", "--node-id", node.node_id,
                    "--grpc-address", f"127.0.0.1:{port('agentd', 'grpc')}",
                    "--metrics-address", f"127.0.0.1:{port('agentd_metrics', 'metrics')}",
                    "--meshd-attach", node.attach_address, "--data-dir", str(self.run_dir / f"{node.node_id}-agentd"),
                    "--workers", "1", "--examples", "--etcd", self.etcd_endpoint, "--cluster", self.cluster,
                    "--runs-store", self.runs_store, "--http-address", f"127.0.0.1:{port('agentd_http', 'http')}", *secure]
        return [sys.executable, "-m", "coordinator", "--node-id", node.node_id, "--etcd", self.etcd_endpoint,
                "--cluster", self.cluster, "--grpc-port", str(port("coordinator", "grpc")),
                "--metrics-port", str(port("coordinator_metrics", "metrics")), "--lease-ttl", str(self.lease_ttl),
                *secure]

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 60.0) -> DevCluster:
        """Start etcd (if embedded) and every node's daemons; wait until each reports ready."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.etcd_endpoint:
            base = self.base_port
            self.embedded = EmbeddedEtcd(data_dir=self.run_dir / "etcd", client_port=base,
                                         peer_port=None if base is None else base + 1)
            self.embedded.start()
            self.etcd_endpoint = self.embedded.endpoint
        deadline = time.monotonic() + slow(timeout)
        for tier in ([d for n in self.nodes for d in n.daemons if d.kind == "meshd"],  # agentd attaches to it
                     [d for n in self.nodes for d in n.daemons if d.kind != "meshd"]):
            for daemon in tier:
                self._spawn(daemon)
            for daemon in tier:
                self.wait_ready(daemon, max(0.1, deadline - time.monotonic()))
        return self

    def start_node(self, node: Node, wait: bool = True, timeout: float = 30.0) -> None:
        """Start one node's daemons again (after kill or terminate), meshd first, on the ports they had."""
        for daemon in node.daemons:
            self.restart(daemon, wait, timeout)

    def restart(self, daemon: DaemonProcess, wait: bool = True, timeout: float = 30.0) -> None:
        """Start one daemon again (after kill or terminate) on the gRPC and metrics ports it had.

        Like a daemon restarted on its host, it binds its old address, so clients holding it reconnect.
        (Should another process have taken the port meanwhile, the daemon fails loudly: "port in use".)
        """
        if daemon.alive:
            raise ClusterError(f"{daemon.kind} of {daemon.node_id} is still running; kill or terminate it first")
        self._spawn(daemon, reuse_ports=True)
        if wait:
            self.wait_ready(daemon, timeout)

    def kill_daemon(self, daemon: DaemonProcess) -> None:
        """kill -9 one daemon (e.g. a node's agentd), leaving the rest of its node running."""
        daemon.kill()

    def restart_daemon(self, daemon: DaemonProcess, timeout: float = 60.0) -> None:
        """Start one daemon again after :meth:`kill_daemon` (:meth:`restart`; a restarted agentd is accepted
        by its meshd at once, since meshd drops an attachment whose connection is gone)."""
        self.restart(daemon, timeout=timeout)

    def _node_of(self, daemon: DaemonProcess) -> Node:
        return next(n for n in self.nodes if daemon in n.daemons)

    def _spawn(self, daemon: DaemonProcess, reuse_ports: bool = False) -> None:
        daemon.args = self._command(daemon, self._node_of(daemon), daemon.info if reuse_ports else {})
        daemon.ready = threading.Event()
        daemon.info = {}
        daemon.exit_reported = False
        daemon.paused = False
        log = open(daemon.log_path, "a")  # noqa: SIM115 - handed to the reader thread, closed there
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        if daemon.kind == "agentd" and self.runs_config:
            env["AGENTD_RUNS"] = json.dumps(self.runs_config)
        daemon.proc = subprocess.Popen(daemon.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       bufsize=1, start_new_session=True, env=env)
        threading.Thread(target=_pump, args=(daemon, daemon.proc, log), daemon=True,
                         name=f"{daemon.node_id}-{daemon.kind}-log").start()

    def wait_ready(self, daemon: DaemonProcess, timeout: float = 30.0) -> None:
        """Wait for the daemon's ready line, or raise ClusterError with its log."""
        limit = slow(timeout)
        deadline = time.monotonic() + limit
        while not daemon.ready.wait(0.05):
            if not daemon.alive or time.monotonic() > deadline:
                why = "exited" if not daemon.alive else f"was not ready within {limit:g}s"
                tail = daemon.output()[-3000:]
                raise ClusterError(f"{daemon.kind} of {daemon.node_id} {why}:\n{tail}")

    # ------------------------------------------------------------------ inspecting

    @property
    def endpoints(self) -> list[str]:
        """meshd gRPC endpoints of every node, in node order."""
        return [node.endpoint for node in self.nodes if node.meshd is not None]

    @property
    def coordinators(self) -> list[DaemonProcess]:
        """Every node's coordinator process, in node order."""
        return [node.coordinator for node in self.nodes if node.coordinator is not None]

    @property
    def coordinator_endpoints(self) -> list[str]:
        """Every coordinator's gRPC address, in node order."""
        return [c.endpoint for c in self.coordinators]

    def leader(self, timeout: float = 10.0, exclude: DaemonProcess | None = None) -> DaemonProcess:
        """The coordinator that leads (asks each live one through the SDK), waiting up to ``timeout``."""
        from mabeam_client.coordinator import SyncCoordinatorClient

        def probe() -> DaemonProcess | None:
            for daemon in self.coordinators:
                if daemon is exclude or not daemon.alive or daemon.paused:
                    continue
                client = SyncCoordinatorClient(daemon.endpoint, timeout=1.0, failover_timeout=0.0)
                try:
                    if client.leader().is_leader:
                        return daemon
                finally:
                    client.close()
            return None

        leader = wait_until(probe, timeout, interval=0.05, what="a coordinator leads")
        assert leader is not None  # wait_until returns only a truthy value
        return leader

    # ------------------------------------------------------------------ faults and stopping

    def describe(self) -> dict[str, object]:
        """The cluster as plain data (``mabeam up --json``, SDK conformance runners): etcd and, per node,
        each daemon's gRPC endpoint and pid (meshd's attach address, agentd's runs HTTP address)."""
        nodes = []
        for node in self.nodes:
            entry: dict[str, object] = {"node_id": node.node_id}
            if node.meshd is not None:
                entry["attach"] = node.attach_address
            for daemon in node.daemons:
                entry[daemon.kind] = daemon.endpoint
                entry[f"{daemon.kind}_pid"] = daemon.pid or 0
                if daemon.http_endpoint:
                    entry[f"{daemon.kind}_http"] = daemon.http_endpoint
            nodes.append(entry)
        described: dict[str, object] = {"etcd": self.etcd_endpoint, "cluster": self.cluster, "nodes": nodes}
        if self.security is not None:  # what an SDK of any language needs to connect (docs/security.md)
            client = self.security.client()
            described["security"] = {"token": client.token, "tls_ca": client.tls_ca, "tls_cert": client.tls_cert,
                                     "tls_key": client.tls_key}
        return described

    def restart_dead(self, timeout: float = 30.0) -> list[str]:
        """Start again every daemon that is not running (meshd first); the ones restarted, as "kind@node"."""
        restarted = []
        for meshd_tier in (True, False):
            for node in self.nodes:
                for daemon in node.daemons:
                    if (daemon.kind == "meshd") == meshd_tier and not daemon.alive:
                        self.restart(daemon, timeout=timeout)
                        restarted.append(f"{daemon.kind}@{node.node_id}")
        return restarted

    def kill(self, index: int) -> None:
        """kill -9 every daemon of node ``index`` (0-based), as a host dying would; meshd leaves at lease expiry."""
        for daemon in self.nodes[index].daemons:
            daemon.kill()

    def terminate(self, index: int, timeout: float = 10.0) -> int | None:
        """SIGTERM node ``index``'s daemons (meshd last) and wait; returns meshd's exit code (or the last one's)."""
        code = None
        for daemon in reversed(self.nodes[index].daemons):
            code = daemon.terminate(timeout)
        return code

    def stop(self) -> None:
        """Stop every daemon (SIGTERM, then SIGKILL; agentd and coordinator before meshd) and the embedded etcd."""
        for kinds in (("agentd", "coordinator"), ("meshd",)):
            daemons = [d for node in self.nodes for d in node.daemons if d.kind in kinds]
            for daemon in daemons:
                if daemon.alive:
                    if daemon.paused:
                        daemon.resume()
                    daemon.signal(signal.SIGTERM)
            for daemon in daemons:
                daemon.terminate(10.0, send=False)
                daemon.release_ports()
        if self.embedded is not None:
            self.embedded.stop()

    def close(self) -> None:
        """Stop everything and remove the embedded etcd's data (and the run dir if it was temporary).

        With ``MABEAM_KEEP_RUN_DIR=1`` in the environment the run dir (every daemon's log) is kept and named
        on stderr, for looking into a failed test.
        """
        self.stop()
        if os.environ.get("MABEAM_KEEP_RUN_DIR"):
            print(f"dev cluster {self.cluster}: logs kept in {self.run_dir}", file=sys.stderr)
            return
        if self.embedded is not None:
            self.embedded.close()
        if self._own_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> DevCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pump(daemon: DaemonProcess, proc: subprocess.Popen[str], log: IO[str]) -> None:
    """Copy a child's output to its log file and take its ready line (the addresses it bound)."""
    assert proc.stdout is not None
    with log, contextlib.suppress(ValueError, OSError):
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if not daemon.ready.is_set():
                parsed = parse_ready_line(line)
                if parsed is not None and parsed.kind == daemon.kind:
                    daemon.info = parsed.fields
                    daemon.release_ports()  # it has bound them (a restart on the ports it had)
                    daemon.ready.set()
