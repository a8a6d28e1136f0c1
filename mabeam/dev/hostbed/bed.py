"""The multi-host test bed: N namespace hosts, an etcd cluster over them, and every daemon on every host.

::

    with HostBed(hosts=3) as bed:                 # needs root; see netns.unavailable_reason()
        host = bed.host(3)
        host.endpoint("meshd")                    # "10.200.0.3:7100", reachable from the test process
        bed.partition(host)                       # drop its traffic both ways
        bed.heal(host)
        bed.pause(host, "meshd"); bed.resume(host, "meshd")
        bed.kill(host, "coordinator"); bed.restart(host, "coordinator")
        bed.etcd.kill(bed.etcd.leader()); ...

Every fault is written to :attr:`HostBed.timeline` with its wall-clock time;
the invariant checks and the failure report read it. :meth:`close` kills every
process, deletes namespaces, veths, bridge and the run directory, and is safe
to call after a failed start.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from mabeam.dev.hostbed.etcdcluster import EtcdCluster
from mabeam.dev.hostbed.launch import KINDS, PORTS, ConfigLauncher, HostContext, Launcher
from mabeam.dev.hostbed.netns import HostNet, Network, run_dir_prefix
from mabeam.dev.hostbed.processes import Daemon
from mabeam.dev.security import DevSecurity


@dataclass
class Host:
    """One host of the bed: its network place, its context for launchers, its daemons."""

    net: HostNet
    context: HostContext
    daemons: dict[str, Daemon] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The node id (``host-<i>``)."""
        return self.net.name

    @property
    def address(self) -> str:
        """The host's address on the bed's bridge."""
        return self.net.address

    def endpoint(self, port_name: str) -> str:
        """``address:port`` of a fixed port (``meshd``, ``agentd``, ``coordinator``, ``meshd_metrics``...)."""
        return f"{self.net.address}:{PORTS[port_name]}"


class HostBed:
    """Build, fault and tear down a cluster of namespace hosts (see the module docstring)."""

    def __init__(self, hosts: int = 3, etcd_members: int = 3, launcher: Launcher | None = None,
                 lease_ttl: int = 3, kinds: tuple[str, ...] = KINDS, run_dir: str | Path | None = None) -> None:
        self.network = Network(hosts)
        self.launcher: Launcher = launcher or ConfigLauncher()
        self.lease_ttl = lease_ttl
        self.kinds = kinds
        self.etcd_members = etcd_members
        self.cluster = f"bed{uuid.uuid4().hex[:8]}"
        self._own_dir = run_dir is None
        self.run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix=run_dir_prefix(self.network.tag)))
        self.hosts: list[Host] = []
        self.etcd: EtcdCluster | None = None
        #: Token keys, the CA and every host's certificate (each for the host's own address).
        self.security: DevSecurity | None = None
        self.timeline: list[tuple[float, str]] = []

    # -- life cycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> HostBed:
        """Network, etcd cluster, then on every host meshd, agentd, coordinator; waits until each is ready."""
        try:
            self._start(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _start(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.network.create()
        self.note(f"network {self.network.subnet} on bridge {self.network.bridge}")
        self.etcd = EtcdCluster(self.network.hosts, self.etcd_members, self.run_dir / "etcd", token=self.cluster)
        self.etcd.start(timeout=max(5.0, deadline - time.monotonic()))
        self.note(f"etcd cluster of {self.etcd_members} up")
        self.security = DevSecurity(self.run_dir / "security", self.cluster,
                                    {net.name: (net.address,) for net in self.network.hosts})
        from mabeam_client.security import set_default

        set_default(self.security.client())  # every SDK client of the bed's process (an admin of "default")
        for net in self.network.hosts:
            directory = self.run_dir / net.name
            directory.mkdir(parents=True, exist_ok=True)
            context = HostContext(net.index, net.name, net.address, directory, self.cluster, self.etcd.endpoints,
                                  self.lease_ttl, self.security.toml(net.name))
            host = Host(net, context)
            for kind in self.kinds:
                host.daemons[kind] = Daemon(net.name, kind, directory / f"{kind}.log", net.exec_prefix())
            self.hosts.append(host)
        for tier in (("meshd",), tuple(k for k in self.kinds if k != "meshd")):
            started = [host.daemons[k] for host in self.hosts for k in tier if k in host.daemons]
            for daemon in started:
                self._launch(daemon)
            for daemon in started:
                daemon.wait_ready(max(1.0, deadline - time.monotonic()))
        self.note("every daemon ready")

    def _launch(self, daemon: Daemon) -> None:
        host = self.host(daemon.host)
        daemon.start(self.launcher.spec(host.context, daemon.kind))

    def close(self) -> None:
        """Kill every daemon, stop the etcd members, tear the network down and delete the run directory
        (kept, for a look at every log, when ``MABEAM_HOSTBED_KEEP`` is set)."""
        # The scenario is over (its invariants were checked before): kill -9 every daemon at once, which
        # is also what tears down fastest; a graceful stop is exercised by the daemons' own tests.
        daemons = [d for host in self.hosts for d in host.daemons.values()]
        for daemon in daemons:
            daemon.kill_nowait()
        deadline = time.monotonic() + 5.0
        for daemon in daemons:
            daemon.wait_stopped(deadline)
        if self.etcd is not None:
            self.etcd.close()
        if self.security is not None:
            from mabeam_client.security import set_default

            set_default(None)
        self.network.destroy()
        if self._own_dir and not os.environ.get("MABEAM_HOSTBED_KEEP"):
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> HostBed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lookups ----------------------------------------------------------------------------------

    def host(self, which: int | str) -> Host:
        """A host by 1-based index or by name (``host-2``)."""
        if isinstance(which, int):
            return self.hosts[which - 1]
        return next(h for h in self.hosts if h.name == which)

    def endpoints(self, kind: str) -> list[str]:
        """``address:port`` of daemon ``kind`` on every host, in host order."""
        return [h.endpoint(kind) for h in self.hosts]

    def note(self, what: str) -> float:
        """Record an event on the timeline; returns its wall-clock time."""
        now = time.time()
        self.timeline.append((now, what))
        return now

    def report(self, log_lines: int = 25) -> str:
        """The timeline and the tail of every daemon's and etcd member's log (printed when a scenario fails)."""
        start = self.timeline[0][0] if self.timeline else 0.0
        parts = [f"run directory: {self.run_dir} (MABEAM_HOSTBED_KEEP=1 keeps it)", "timeline:"] + [f"  +{t - start:7.2f}s {what}" for t, what in self.timeline]
        for host in self.hosts:
            for daemon in host.daemons.values():
                parts.append(f"--- {host.name} {daemon.kind} (pid {daemon.pid}) log tail:")
                parts.append(daemon.log_tail(log_lines))
        if self.etcd is not None:
            for member in self.etcd.members:
                parts.append(f"--- {member.name} log tail:")
                parts.append(member.server._log_tail(log_lines))
        return "\n".join(parts)

    # -- faults -----------------------------------------------------------------------------------

    def partition(self, host: Host, direction: str = "both") -> float:
        """Drop the host's traffic (``both``, ``egress`` or ``ingress``); returns when."""
        self.network.partition(host.net, direction)
        return self.note(f"partition {host.name} ({direction})")

    def link_down(self, host: Host) -> float:
        """Pull the host's cable; returns when."""
        self.network.link_down(host.net)
        return self.note(f"link down {host.name}")

    def heal(self, host: Host) -> float:
        """Undo partitions and link-down of the host; returns when."""
        self.network.heal(host.net)
        return self.note(f"heal {host.name}")

    def pause(self, host: Host, kind: str) -> float:
        """SIGSTOP a daemon (its whole process group); returns when."""
        host.daemons[kind].signal(signal.SIGSTOP)
        return self.note(f"SIGSTOP {kind} on {host.name}")

    def resume(self, host: Host, kind: str) -> float:
        """SIGCONT a paused daemon; returns when."""
        host.daemons[kind].signal(signal.SIGCONT)
        return self.note(f"SIGCONT {kind} on {host.name}")

    def kill(self, host: Host, kind: str) -> float:
        """kill -9 a daemon (its whole process group); returns when."""
        host.daemons[kind].kill()
        return self.note(f"kill -9 {kind} on {host.name}")

    def restart(self, host: Host, kind: str, timeout: float = 60.0) -> float:
        """Start a daemon again (as systemd's Restart= would) and wait until it is ready; returns when it was."""
        daemon = host.daemons[kind]
        if daemon.alive:
            daemon.stop()
        self.note(f"restart {kind} on {host.name}")
        self._launch(daemon)
        daemon.wait_ready(timeout)
        return self.note(f"{kind} on {host.name} ready again")
