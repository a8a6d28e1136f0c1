"""One bootstrap for every mabeam daemon: what meshd, agentd and the coordinator do around their own work.

A daemon is a :class:`DaemonSpec` — its kind, its config model and environment
prefix, its flags, an optional ``prepare`` step and the coroutine that runs it —
and its ``__main__`` is one line, ``sys.exit(mabeam.daemon.main(SPEC, argv))``.
:func:`main` then, in this order:

1. builds the command line from the spec's :class:`Flag` list (``--config`` always);
2. loads the config (:func:`mabeam.config.load_model`: TOML file, then
   ``<PREFIX>_<FIELD>`` environment variables, then flags); a bad value exits
   with code 2 and one line per bad field;
3. sets up logging (:mod:`mabeam.logs`: one logfmt line per event, the node id,
   journald priorities, secrets masked);
4. runs ``prepare(config)`` (loading plugins, say; a :class:`~mabeam.config.ConfigError`
   there is a configuration problem: exit 2) and then the daemon under uvloop;
5. turns a :class:`~mabeam.startup.StartupError` (also inside the
   ExceptionGroup a TaskGroup wraps it in) into one line per problem on stderr
   and exit code 75 (EX_TEMPFAIL: etcd unreachable, a port still held — systemd
   restarts the unit, a retry may pass).

Inside, a daemon serves through :class:`Serving`, which owns what all three
share: one gRPC server (``grpc.so_reuseport`` off, so a second daemon on the
same port fails loudly; the error interceptor of :mod:`mabeam.grpcutil`, the one
place statuses are built, and inside it the auth interceptor of
:mod:`mabeam.security`: bearer tokens, the rights table, the audit; TLS with
client certificates when ``[security]`` configures it, and loopback only when it
does not — see docs/security.md), gRPC health and reflection for its services,
Prometheus ``/metrics`` on its own port from a registry of the daemon's own
(never prometheus-client's global one, so several daemons share a test process),
SIGTERM/SIGINT, the ready line (:mod:`mabeam.startup`) and systemd's
``sd_notify`` (:mod:`mabeam.systemd`: READY, STATUS, WATCHDOG, STOPPING)::

    serving = Serving("coordinator", registry=metrics.registry, security=config.security, cluster=config.cluster)
    serving.add(coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server, servicer, SERVICE_NAME)
    port = await serving.start_grpc(config.grpc_host, config.grpc_port)
    metrics_port = serving.start_metrics(config.grpc_host, config.metrics_port)
    serving.on_stop(node.stop, "resigning")
    ...
    serving.ready(status(), node_id=..., grpc=f"{host}:{port}", ...)
    ...
    await serving.close(config.shutdown_grace)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server
from pydantic import BaseModel

from mabeam import logs
from mabeam.config import ConfigError, default_env_value, load_model
from mabeam.etcd.client import EtcdClient
from mabeam.grpcutil import ErrorInterceptor
from mabeam.security.config import SecurityConfig
from mabeam.security.server import ServerSecurity
from mabeam.startup import StartupError, announce_ready, startup_exit
from mabeam.systemd import EXIT_CONFIG, EXIT_TEMPFAIL, Notifier

log = logging.getLogger("mabeam.daemon")

#: Largest request a daemon's gRPC server accepts (gRPC's default, said once for all three).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# -------------------------------------------------------------------------------------------- the command line


@dataclass(frozen=True)
class Flag:
    """One command-line flag and the config field it sets.

    ``field`` is dotted for a nested table (``dataplane.base_port``). ``kind``: ``value`` takes one
    string (pydantic converts it), ``switch`` is a ``store_true`` flag, ``pairs`` is repeatable
    ``KEY=VALUE`` into a mapping, ``append`` is repeatable into a list.
    """

    option: str
    field: str
    help: str = ""
    kind: Literal["value", "switch", "pairs", "append"] = "value"


#: The flags most daemons share, defined once.
NODE_ID = Flag("--node-id", "node_id", "unique id of this node in the cluster")
CLUSTER = Flag("--cluster", "cluster", "cluster name (etcd key prefix /mabeam/<cluster>/)")
ETCD = Flag("--etcd", "etcd", "etcd endpoints HOST:PORT[,HOST:PORT...]")
GRPC_HOST = Flag("--grpc-host", "grpc_host", "address the gRPC server binds")
GRPC_PORT = Flag("--grpc-port", "grpc_port", "gRPC port (0: one the OS picks, reported in the ready line)")
ADVERTISE_HOST = Flag("--advertise-host", "advertise_host", "host published to peers and clients")
METRICS_PORT = Flag("--metrics-port", "metrics_port", "Prometheus /metrics port (0: one the OS picks)")
LEASE_TTL = Flag("--lease-ttl", "lease_ttl", "etcd lease TTL in seconds")
#: The ``[security]`` table as flags (docs/security.md): every daemon takes them.
SECURITY_FLAGS = (
    Flag("--token-keys", "security.token_keys", "directory of <kid>.pub token keys (bearer tokens required)"),
    Flag("--token-keys-etcd", "security.token_keys_etcd", "also trust the token keys published in etcd",
         kind="switch"),
    Flag("--tls-cert", "security.tls_cert", "PEM certificate of the gRPC server (mTLS)"),
    Flag("--tls-key", "security.tls_key", "PEM private key of --tls-cert"),
    Flag("--tls-ca", "security.tls_ca", "PEM CA that clients' certificates chain to"),
)


def build_parser(prog: str, description: str, flags: Sequence[Flag]) -> argparse.ArgumentParser:
    """The daemon's argparse parser: ``--config`` and one option per flag (every one optional)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help="TOML config file")
    for flag in flags:
        dest = _dest(flag)
        if flag.kind == "switch":
            parser.add_argument(flag.option, dest=dest, action="store_true", default=None, help=flag.help)
        elif flag.kind in ("pairs", "append"):
            parser.add_argument(flag.option, dest=dest, action="append", default=None,
                                help=flag.help + (" (KEY=VALUE, repeatable)" if flag.kind == "pairs" else
                                                  " (repeatable)"))
        else:
            parser.add_argument(flag.option, dest=dest, help=flag.help)
    return parser


def parse_command_line(prog: str, description: str, flags: Sequence[Flag],
                       argv: Sequence[str] | None = None) -> tuple[str | None, dict[str, Any]]:
    """Parse ``argv``: (config file, overrides for the fields the flags given set, nested by dots)."""
    args = build_parser(prog, description, flags).parse_args(argv)
    overrides: dict[str, Any] = {}
    for flag in flags:
        value = getattr(args, _dest(flag))
        if value is None:
            continue
        if flag.kind == "pairs":
            value = dict(item.split("=", 1) for item in value if "=" in item)
        target = overrides
        *parents, leaf = flag.field.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return args.config, overrides


def _dest(flag: Flag) -> str:
    return flag.option.lstrip("-").replace("-", "_")


# -------------------------------------------------------------------------------------------- the process


@dataclass(frozen=True)
class DaemonSpec:
    """What :func:`main` needs to know about a daemon (see the module docstring)."""

    kind: str
    description: str
    model: type[BaseModel]
    env_prefix: str
    flags: Sequence[Flag]
    run: Callable[[Any], Coroutine[Any, Any, None]]
    #: Before the loop starts; may raise ConfigError (exit 2) or StartupError (exit 75).
    prepare: Callable[[Any], None] | None = None
    env_value: Callable[[str, str], Any] = default_env_value
    #: The config field holding the log level, if the daemon has one.
    log_level_field: str | None = None
    #: Config values never to be logged (masked in every line), e.g. a secret key.
    secrets: Callable[[Any], Sequence[str]] = field(default=lambda config: ())  # noqa: ARG005


def load(spec: DaemonSpec, file: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> Any:
    """The daemon's config from a TOML file, ``<PREFIX>_*`` environment variables and overrides (ConfigError)."""
    return load_model(spec.model, daemon=spec.kind, env_prefix=spec.env_prefix, file=file, env=env,
                      overrides=overrides, env_value=spec.env_value)


def main(spec: DaemonSpec, argv: Sequence[str] | None = None) -> int:
    """Run a daemon from its command line to its exit code (see the module docstring)."""
    logs.setup(spec.kind)
    file, overrides = parse_command_line(spec.kind, spec.description, spec.flags, argv)
    try:
        config = load(spec, file, overrides=overrides)
    except ConfigError as error:
        print(f"{spec.kind}: {error}", file=sys.stderr)
        return EXIT_CONFIG
    for secret in spec.secrets(config):
        logs.register_secret(secret)
    level = getattr(config, spec.log_level_field) if spec.log_level_field else "INFO"
    logs.setup(spec.kind, node=getattr(config, "node_id", "") or "", level=level)
    import uvloop

    try:
        if spec.prepare is not None:
            spec.prepare(config)
        uvloop.run(spec.run(config))  # gRPC objects must be created inside the running loop
    except ConfigError as error:
        print(f"{spec.kind}: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except (StartupError, BaseExceptionGroup) as error:
        if isinstance(error, BaseExceptionGroup):
            bad_config, _ = error.split(ConfigError)  # e.g. an unsecured non-loopback bind inside a TaskGroup
            if bad_config is not None:
                for problem in _leaves(bad_config):
                    print(f"{spec.kind}: {problem}", file=sys.stderr)
                return EXIT_CONFIG
        return startup_exit(spec.kind, error, EXIT_TEMPFAIL)  # re-raises what is not a StartupError
    return 0


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for sub in error.exceptions for leaf in _leaves(sub)]
    return [error]


# -------------------------------------------------------------------------------------------- serving


class Serving:
    """The serving half every daemon shares (see the module docstring).

    Create it inside the running loop. ``add`` the daemon's servicers, then
    ``start_grpc``; the health service reports ``""`` and every added service
    NOT_SERVING until the daemon says otherwise (``set_serving``, ``ready``).
    """

    def __init__(self, kind: str, *, registry: CollectorRegistry | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, options: Sequence[tuple[str, Any]] = (),
                 security: SecurityConfig | None = None, cluster: str = "default") -> None:
        self.kind = kind
        #: The daemon's own Prometheus registry (what /metrics serves).
        self.registry = registry if registry is not None else CollectorRegistry()
        self.interceptor = ErrorInterceptor(self.registry)
        #: Tokens, rights, audit and TLS (mabeam.security); off (loopback only) without ``[security]`` settings.
        self.security = ServerSecurity(security or SecurityConfig.model_validate({}), cluster, kind, self.registry)
        # The error interceptor outside (it builds every status, refusals included), auth inside it.
        self.server = grpc.aio.server(interceptors=self.security.interceptors(self.interceptor), options=[
            ("grpc.so_reuseport", 0),  # a second daemon on the same port must fail, not share it
            ("grpc.max_receive_message_length", max_message_bytes),
            *options,
        ])
        self.health = health.aio.HealthServicer()
        self.notifier = Notifier.from_env()
        self.services: list[str] = []
        self.grpc_port = 0
        self.metrics_port: int | None = None
        self._metrics_server: WSGIServer | None = None
        self._started = False

    def add(self, add_to_server: Callable[[Any, grpc.aio.Server], None], servicer: Any, service: str) -> None:
        """Serve ``servicer`` (``add_to_server`` is the generated ``add_<Service>Servicer_to_server``)."""
        add_to_server(servicer, self.server)
        self.services.append(service)

    async def start_grpc(self, host: str, port: int) -> int:
        """Bind ``host:port`` (0: the OS picks), start serving; returns the bound port (StartupError if taken)."""
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection([*self.services, health.SERVICE_NAME, reflection.SERVICE_NAME],
                                            self.server)
        address = f"{host}:{port}"
        # TLS with client certificates when configured; an unsecured non-loopback host is InsecureBindError (a
        # ConfigError: exit 2). 0 when the port is taken.
        bound = self.security.bind(self.server, host, port)
        if not bound:
            raise StartupError(f"cannot bind gRPC on {address}: the port is in use or the address is not local")
        for name in ("", *self.services):
            await self.health.set(name, NOT_SERVING)
        await self.server.start()
        self._started = True
        self.grpc_port = bound
        return bound

    def start_metrics(self, host: str, port: int | None) -> int | None:
        """Serve /metrics from the daemon's registry on ``host:port`` (0: the OS picks; None: off).

        prometheus-client's own thread serves it: a scrape stalls the event loop less than a handler on
        it would (STACK-NOTES). Returns the bound port (StartupError if taken).
        """
        if port is None:
            return None
        try:
            self._metrics_server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            raise StartupError(f"cannot bind metrics on {host}:{port}: {error.strerror}") from None
        self.metrics_port = self._metrics_server.server_port
        return self.metrics_port

    async def follow_keys(self, etcd: EtcdClient | None) -> None:
        """Until cancelled: follow token key rotation (the key directory, and etcd when configured)."""
        await self.security.follow_keys(etcd)

    async def set_serving(self, service: str, serving: bool) -> None:
        """Report ``service`` ("" for the whole daemon) SERVING or NOT_SERVING on gRPC health."""
        await self.health.set(service, SERVING if serving else NOT_SERVING)

    def on_stop(self, stop: Callable[[], None], status: str = "stopping") -> None:
        """On SIGTERM/SIGINT: tell systemd STOPPING (with ``status``), then call ``stop``."""

        def stopping() -> None:
            self.notifier.stopping(status)
            stop()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping)

    def ready(self, status: str, **fields: Any) -> None:
        """The daemon serves: print its ready line (the addresses it bound) and tell systemd READY."""
        announce_ready(self.kind, **fields)
        self.notifier.ready(status)

    async def watchdog(self, status: Callable[[], str]) -> None:
        """Until cancelled: systemd's WATCHDOG pings and STATUS lines from this loop (nothing without systemd)."""
        await self.notifier.run(status)

    async def close(self, grace: float) -> None:
        """Stop serving gRPC (in-flight calls get ``grace`` seconds) and /metrics."""
        if self._started:
            await self.server.stop(grace)
            self._started = False
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        self.notifier.close()
