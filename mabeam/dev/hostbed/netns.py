"""The bed's network: one Linux bridge, and per host a network namespace joined to it by a veth pair.

Every name carries a per-run tag (``<pid><letter>``) so parallel runs never
collide, and :func:`clean_stale` removes what runs whose process is gone left
behind. Hosts get ``10.<a>.<b>.<i>/24`` on a subnet no interface of this
machine uses yet (picked under a lock file); the bridge itself takes ``.254``
so the test process, in the root namespace, reaches every host. Nothing binds
to that address: daemons bind to their own host's address only.

Faults act on the veth pair of one host: a ``blackhole`` root qdisc (it drops
every packet queued on the interface, which is what ``netem loss 100%`` does;
this machine's kernel has no netem, and blackhole is built into every kernel
with traffic control) on the host's side drops what it sends (egress), on the
bridge side what it receives (ingress); both together cut it off.
:meth:`Network.heal` removes them.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: Namespaces: ``mbbed-<tag>-h<i>``; links: ``mb<tag>br`` (bridge) and ``mb<tag>v<i>`` (veth, bridge side).
NS_PREFIX = "mbbed-"
_NS_RE = re.compile(r"^mbbed-(\d+)([a-z])-")
_LINK_RE = re.compile(r"^mb(\d+)([a-z])(br|v\d+|p\d+)$")
_LOCK = Path(tempfile.gettempdir()) / "mabeam-hostbed.lock"
_runs_in_process = 0


class NetnsUnavailable(RuntimeError):
    """This machine cannot build the bed (not root, no ``ip``/``tc``, or namespaces refused)."""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def unavailable_reason() -> str | None:
    """Why the bed cannot run here (None when it can): needs root, iproute2 and tc, and working namespaces."""
    if os.geteuid() != 0:
        return "the multi-host test bed needs root (network namespaces, veth pairs, tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the multi-host test bed needs `{tool}` (iproute2) on PATH"
    probe = f"{NS_PREFIX}probe{os.getpid()}"
    try:
        result = _run("ip", "netns", "add", probe, check=False)
        if result.returncode != 0:
            return f"`ip netns add` refused: {result.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: Run directories: ``<tmp>/mabeam-hostbed-<tag>-<random>`` (see :func:`run_dir_prefix`).
_DIR_RE = re.compile(r"^mabeam-hostbed-(\d+)([a-z])-")


def run_dir_prefix(tag: str) -> str:
    """The prefix of a run directory of the run ``tag``, so a later run can remove it if this one dies."""
    return f"mabeam-hostbed-{tag}-"


def clean_stale() -> list[str]:
    """Remove namespaces, veths, bridges and run directories of bed runs whose process no longer exists
    (one killed before it could clean up); returns what went."""
    removed: list[str] = []
    for entry in Path(tempfile.gettempdir()).iterdir():
        match = _DIR_RE.match(entry.name)
        if match and entry.is_dir() and not _alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(str(entry))
    for line in _run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        match = _NS_RE.match(name)
        if match and not _alive(int(match.group(1))):
            _kill_namespace_processes(name)
            _run("ip", "netns", "del", name, check=False)
            removed.append(name)
    for line in _run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        match = _LINK_RE.match(name)
        if match and not _alive(int(match.group(1))):
            _run("ip", "link", "del", name, check=False)
            removed.append(name)
    return removed


def _kill_namespace_processes(namespace: str) -> None:
    pids = _run("ip", "netns", "pids", namespace, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)


@dataclass(frozen=True)
class HostNet:
    """One host's place on the network."""

    index: int  # 1-based
    name: str  # host-<i>
    namespace: str
    address: str
    veth: str  # the bridge-side end, in the root namespace
    inner: str  # the host-side end, inside the namespace

    def exec_prefix(self) -> list[str]:
        """What goes before a command line to run it on this host."""
        return ["ip", "netns", "exec", self.namespace]


class Network:
    """A bridge and ``hosts`` namespaces on it; :meth:`create`, faults, then :meth:`destroy` (idempotent)."""

    def __init__(self, hosts: int) -> None:
        global _runs_in_process
        if not 1 <= hosts <= 200:
            raise ValueError("1 to 200 hosts")
        self.tag = f"{os.getpid()}{chr(ord('a') + _runs_in_process % 26)}"
        _runs_in_process += 1
        self.bridge = f"mb{self.tag}br"
        self.count = hosts
        self.hosts: list[HostNet] = []
        self.subnet: ipaddress.IPv4Network | None = None
        self.gateway = ""
        self._created = False

    def create(self) -> Network:
        """Build the bridge, the namespaces and the veth pairs (under a lock, so subnets never collide)."""
        clean_stale()
        _LOCK.touch(exist_ok=True)
        with open(_LOCK) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self.subnet = _free_subnet()
                self._created = True
                hosts = list(self.subnet.hosts())
                self.gateway = str(hosts[253])
                _run("ip", "link", "add", self.bridge, "type", "bridge")
                _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
                _run("ip", "link", "set", self.bridge, "up")
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        for i in range(1, self.count + 1):
            host = HostNet(i, f"host-{i}", f"{NS_PREFIX}{self.tag}-h{i}", str(hosts[i - 1]),
                           f"mb{self.tag}v{i}", "eth0")
            self.hosts.append(host)
            temp_inner = f"mb{self.tag}p{i}"
            _run("ip", "netns", "add", host.namespace)
            _run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", temp_inner)
            _run("ip", "link", "set", temp_inner, "netns", host.namespace)
            _run("ip", "-n", host.namespace, "link", "set", temp_inner, "name", host.inner)
            _run("ip", "link", "set", host.veth, "master", self.bridge, "up")
            _run("ip", "-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", host.inner)
            _run("ip", "-n", host.namespace, "link", "set", host.inner, "up")
            _run("ip", "-n", host.namespace, "link", "set", "lo", "up")
        return self

    # -- faults ----------------------------------------------------------------------------------

    def partition(self, host: HostNet, direction: str = "both") -> None:
        """Drop the host's traffic: ``both``, ``egress`` (what it sends) or ``ingress`` (what it receives)."""
        if direction not in ("both", "egress", "ingress"):
            raise ValueError("direction is both, egress or ingress")
        if direction in ("both", "egress"):
            _run("ip", "netns", "exec", host.namespace, "tc", "qdisc", "replace", "dev", host.inner, "root",
                 "blackhole")
        if direction in ("both", "ingress"):
            _run("tc", "qdisc", "replace", "dev", host.veth, "root", "blackhole")

    def link_down(self, host: HostNet) -> None:
        """The other way to cut a host off: its cable pulled (the bridge-side end down)."""
        _run("ip", "link", "set", host.veth, "down")

    def heal(self, host: HostNet) -> None:
        """Undo :meth:`partition` and :meth:`link_down` for the host."""
        _run("ip", "netns", "exec", host.namespace, "tc", "qdisc", "del", "dev", host.inner, "root", check=False)
        _run("tc", "qdisc", "del", "dev", host.veth, "root", check=False)
        _run("ip", "link", "set", host.veth, "up", check=False)

    # -- teardown --------------------------------------------------------------------------------

    def destroy(self) -> None:
        """Kill anything still running in the namespaces, then delete veths, namespaces and bridge."""
        if not self._created:
            return
        for host in self.hosts:
            _kill_namespace_processes(host.namespace)
        for host in self.hosts:
            # Deleting one end of a veth deletes both; a namespace can outlive `ip netns del` for a while.
            _run("ip", "link", "del", host.veth, check=False)
            _run("ip", "netns", "del", host.namespace, check=False)
        _run("ip", "link", "del", self.bridge, check=False)
        self._created = False


def _free_subnet() -> ipaddress.IPv4Network:
    used = []
    for line in _run("ip", "-o", "-4", "addr", "show").stdout.splitlines() + \
            _run("ip", "-4", "route", "show").stdout.splitlines():
        for token in line.split():
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(token, strict=False))
    for second in range(200, 250):
        for third in range(256):
            candidate = ipaddress.IPv4Network(f"10.{second}.{third}.0/24")
            if not any(candidate.overlaps(net) for net in used if net.prefixlen > 0):
                return candidate
    raise NetnsUnavailable("no free 10.200-249.x.0/24 subnet for the bed")
