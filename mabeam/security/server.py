"""Security on a daemon's gRPC server: the interceptors, the key ring, TLS, and the loopback rule.

Every daemon builds one :class:`ServerSecurity` from its ``[security]`` config and
uses it three ways::

    security = ServerSecurity(config.security, cluster, "meshd", metrics_registry)
    server = grpc.aio.server(interceptors=security.interceptors(ErrorInterceptor(registry)))
    port = security.bind(server, host, port)          # TLS or not; refuses an unsecured non-loopback host
    tg.create_task(security.follow_keys(etcd))        # key rotation: the directory and/or etcd, live

The rule :func:`bind_grpc` enforces: without tokens *and* mTLS a daemon binds
loopback only (a warning says security is off); asked for any other address it
stops with a startup error naming what to configure.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry

from mabeam.config import ConfigError
from mabeam.etcd.client import EtcdClient
from mabeam.security.audit import Audit
from mabeam.security.config import SecurityConfig
from mabeam.security.interceptor import AuthInterceptor
from mabeam.security.keys import KeyRing
from mabeam.security.tokens import TokenVerifier

log = logging.getLogger("mabeam.security")


class InsecureBindError(ConfigError):
    """The daemon was asked to serve a non-loopback address without tokens and mTLS (a configuration problem:
    the daemon exits 2, a retry cannot fix it)."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for anything else (0.0.0.0 too)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def server_credentials(config: SecurityConfig) -> grpc.ServerCredentials:
    """TLS for a gRPC server with client certificates required (mTLS), from the config's PEM files."""
    return grpc.ssl_server_credentials(
        [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())],
        root_certificates=Path(config.tls_ca).read_bytes(), require_client_auth=True)


def check_bind(host: str, port: int, config: SecurityConfig) -> None:
    """Raise :class:`InsecureBindError` when ``host`` is not loopback and tokens or mTLS are off."""
    if not config.secure and not is_loopback(host):
        missing = [what for what, on in (("token keys ([security] token_keys or token_keys_etcd)", config.auth_enabled),
                                         ("mTLS ([security] tls_cert, tls_key, tls_ca)", config.tls_enabled)) if not on]
        raise InsecureBindError(
            f"refusing to serve gRPC on {host}:{port} without {' and '.join(missing)}: a non-loopback address is "
            f"reachable by other hosts (see docs/security.md; `mabeam certs` and `meshctl token keygen` make the "
            f"files), or bind 127.0.0.1 for a dev cluster")


def bind_grpc(server: grpc.aio.Server, host: str, port: int, config: SecurityConfig, daemon: str) -> int:
    """Bind ``host:port`` with TLS when configured; returns the bound port (0 when the port is taken).

    Raises :class:`InsecureBindError` for a non-loopback host without tokens and mTLS (:func:`check_bind`).
    """
    check_bind(host, port, config)
    if not config.auth_enabled:
        log.warning("%s: no [security] token keys configured: serving gRPC WITHOUT authentication on %s "
                    "(loopback only; see docs/security.md)", daemon, host)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if config.tls_enabled:
            return int(server.add_secure_port(address, server_credentials(config)))
        return int(server.add_insecure_port(address))
    except RuntimeError:  # grpc's "failed to bind"
        return 0


class ServerSecurity:
    """One daemon's security: the audit, the key ring, the verifier and the auth interceptor."""

    def __init__(self, config: SecurityConfig, cluster: str, daemon: str,
                 registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.cluster = cluster
        self.daemon = daemon
        self.audit = Audit(daemon, registry)
        self.keys = KeyRing()
        self.verifier: TokenVerifier | None = None
        if config.auth_enabled:
            if config.token_keys:
                self.keys.load_directory(config.token_keys)
            if not self.keys.key_ids and not config.token_keys_etcd:
                log.warning("%s: the token key directory %s has no <kid>.pub key: every request will be refused",
                            daemon, config.token_keys)
            self.verifier = TokenVerifier(self.keys, cluster)
        self.interceptor = AuthInterceptor(self.verifier, self.audit)

    @property
    def enabled(self) -> bool:
        """True when requests need tokens."""
        return self.verifier is not None

    def interceptors(self, errors: grpc.aio.ServerInterceptor) -> list[grpc.aio.ServerInterceptor]:
        """The server's interceptors: the error interceptor outside (it builds every status), auth inside."""
        return [errors, self.interceptor]

    def bind(self, server: grpc.aio.Server, host: str, port: int) -> int:
        """:func:`bind_grpc` with this daemon's config."""
        return bind_grpc(server, host, port, self.config, self.daemon)

    async def follow_keys(self, etcd: EtcdClient | None) -> None:
        """Follow key rotation (the directory, and etcd when configured) until cancelled; returns at once if off."""
        tasks = []
        if self.config.token_keys:
            tasks.append(self.keys.follow_directory(self.config.token_keys))
        if self.config.token_keys_etcd and etcd is not None:
            tasks.append(self.keys.follow_etcd(etcd, self.cluster))
        if tasks:
            async with asyncio.TaskGroup() as group:
                for task in tasks:
                    group.create_task(task)
