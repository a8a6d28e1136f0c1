"""How the bed starts a daemon on a host: the one pluggable piece.

A :class:`Launcher` maps (host, daemon kind) to a :class:`LaunchSpec`: the
command line, the environment and the config files to write first. The bed
runs that command inside the host's network namespace and waits for the
spec's readiness signal. :class:`ConfigLauncher` (the default) writes
production-style TOML configs modelled on ``deploy/`` — every address the
host's own, CURVE on for the data plane, tokens and mTLS on gRPC (the bed's
:class:`~mabeam.dev.security.DevSecurity`), an etcd cluster of several members —
and runs ``python -m <daemon> --config <file>``. A launcher that parses the
systemd units in ``deploy/`` (their ``ExecStart``, ``Environment`` and config
files) can replace it without touching the rest of the bed.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

#: The daemon kinds a host runs, in start order (agentd attaches to meshd).
KINDS = ("meshd", "agentd", "coordinator")

#: Fixed ports: every host has its own address, so ports never collide and nothing is probed "free".
PORTS = {"meshd": 7100, "meshd_data": 7101, "meshd_metrics": 9100, "agentd": 7300, "agentd_metrics": 9300,
         "coordinator": 7200, "etcd_client": 2379, "etcd_peer": 2380}


@dataclass(frozen=True)
class HostContext:
    """What a launcher may know about the host it starts a daemon on."""

    index: int  # 1-based
    name: str  # the node id: host-<i>
    address: str  # the host's own address; bind only here
    directory: Path  # the host's private directory (configs, data, logs, attach socket)
    cluster: str
    etcd_endpoints: tuple[str, ...]
    lease_ttl: int
    #: The ``[security]`` table of the host's daemons (token keys and mTLS files; empty: none).
    security_toml: str = ""

    def endpoint(self, port_name: str) -> str:
        """``address:port`` of one of the fixed ports."""
        return f"{self.address}:{PORTS[port_name]}"

    @property
    def attach_address(self) -> str:
        """Where processes on this host attach to its meshd."""
        return f"ipc://{self.directory / 'meshd.attach'}"


@dataclass(frozen=True)
class LaunchSpec:
    """A daemon's command line, environment (added to a minimal one) and files to write before it starts.

    ``ready_line`` is the prefix of the stdout line the daemon prints once it serves.
    """

    argv: list[str]
    env: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[Path, str] = field(default_factory=dict)
    ready_line: str = ""


class Launcher(Protocol):
    """Maps (host, daemon kind) to how to start it."""

    def spec(self, host: HostContext, kind: str) -> LaunchSpec:
        """The launch spec of daemon ``kind`` (one of :data:`KINDS`) on ``host``."""
        ...


def _toml_list(values: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(f'"{value}"' for value in values) + "]"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


class ConfigLauncher:
    """Production-style TOML configs (as in ``deploy/``) and ``python -m <daemon> --config FILE``.

    ``dataplane`` overrides keys of meshd's ``[dataplane]`` table (benchmarks compare with CURVE off, or
    run ``single_channel``); it may be changed between restarts.
    """

    def __init__(self, python: str = sys.executable, dataplane: Mapping[str, Any] | None = None) -> None:
        self.python = python
        self.dataplane: dict[str, Any] = dict(dataplane or {})

    def spec(self, host: HostContext, kind: str) -> LaunchSpec:
        """See :class:`Launcher`."""
        config = host.directory / f"{kind}.toml"
        text = {"meshd": self.meshd_toml, "agentd": self.agentd_toml, "coordinator": self.coordinator_toml}[kind](host)
        if host.security_toml:  # a non-loopback address needs tokens and mTLS (docs/security.md)
            text += "\n" + host.security_toml
        return LaunchSpec(argv=[self.python, "-m", kind, "--config", str(config)], files={config: text},
                          ready_line=f"{kind} ready")

    def meshd_toml(self, host: HostContext) -> str:
        """meshd's config: ``deploy/meshd.production.toml`` with this host's address and a CURVE data plane."""
        return f"""# meshd on {host.name} of the multi-host test bed (production-style; see deploy/).
node_id = "{host.name}"
cluster = "{host.cluster}"
etcd = {_toml_list(host.etcd_endpoints)}
etcd_timeout = 5.0
etcd_connect_timeout = 60.0
grpc_host = "{host.address}"
grpc_port = {PORTS["meshd"]}
advertise_host = "{host.address}"
metrics_port = {PORTS["meshd_metrics"]}
lease_ttl = {host.lease_ttl}
tenants = ["default"]
shutdown_grace = 5.0

[labels]
zone = "bed-{host.index}"

[dataplane]
""" + "".join(f"{key} = {_toml_value(value)}\n" for key, value in {
            "bind_host": host.address, "base_port": PORTS["meshd_data"], "attach_address": host.attach_address,
            "curve": True, **self.dataplane}.items())

    @staticmethod
    def agentd_toml(host: HostContext) -> str:
        """agentd's config: attached to the host's meshd, one worker, the example agent types allowed."""
        return f"""# agentd on {host.name} of the multi-host test bed.
node_id = "{host.name}"
grpc_address = "{host.endpoint("agentd")}"
metrics_address = "{host.endpoint("agentd_metrics")}"
workers = 1
data_dir = "{host.directory / "agentd"}"
meshd_attach = "{host.attach_address}"
examples = true
log_level = "INFO"
cluster = "{host.cluster}"
"""

    @staticmethod
    def coordinator_toml(host: HostContext) -> str:
        """The coordinator's config: the etcd cluster, this host's address, the same lease TTL as meshd."""
        return f"""# coordinator on {host.name} of the multi-host test bed.
node_id = "{host.name}"
cluster = "{host.cluster}"
etcd = {_toml_list(host.etcd_endpoints)}
etcd_timeout = 5.0
etcd_connect_timeout = 60.0
grpc_host = "{host.address}"
grpc_port = {PORTS["coordinator"]}
advertise_host = "{host.address}"
lease_ttl = {host.lease_ttl}
shutdown_grace = 1.0
"""


class PinnedLauncher:
    """Another launcher's daemons, each pinned to CPUs with ``taskset`` (host name -> CPU list, e.g. ``"0"``);
    hosts not listed run unpinned. The two-host benchmarks give each namespace host its own core."""

    def __init__(self, inner: Launcher, cpus: Mapping[str, str]) -> None:
        self.inner = inner
        self.cpus = dict(cpus)

    def spec(self, host: HostContext, kind: str) -> LaunchSpec:
        """See :class:`Launcher`."""
        spec = self.inner.spec(host, kind)
        cpus = self.cpus.get(host.name)
        return spec if cpus is None else replace(spec, argv=["taskset", "-c", cpus, *spec.argv])
