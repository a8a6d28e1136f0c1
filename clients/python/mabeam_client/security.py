"""Credentials for a cluster with security on: a bearer token, and TLS with a client certificate.

Every client of this SDK opens its channels through :func:`open_channel` with a
:class:`ClientSecurity`; without one it uses :meth:`ClientSecurity.default`, read once
from the environment::

    MABEAM_TOKEN=<jwt>              # or MABEAM_TOKEN_FILE=/path/to/token
    MABEAM_TLS_CA=/etc/mabeam/tls/ca.crt       # trust this CA for the servers' certificates...
    MABEAM_TLS_CERT=/etc/mabeam/tls/client.crt # ...and present this certificate and key (mTLS)
    MABEAM_TLS_KEY=/etc/mabeam/tls/client.key
    MABEAM_TLS_SERVER_NAME=node-1   # optional: the name to verify instead of the address's host

Explicitly::

    security = ClientSecurity(token=token, tls_ca="ca.crt", tls_cert="me.crt", tls_key="me.key")
    async with MeshClient("10.0.0.5:7100", security=security) as mesh: ...

What goes on the wire (what every SDK sends; docs/security.md): the token as the
``authorization`` metadata ``Bearer <token>`` on every call, and over TLS (mTLS) when a CA
is given. With TLS the token rides as gRPC call credentials (added by the C core); without
TLS (a dev cluster on loopback) a client interceptor adds the same metadata.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

ENV_TOKEN = "MABEAM_TOKEN"
ENV_TOKEN_FILE = "MABEAM_TOKEN_FILE"
ENV_CA = "MABEAM_TLS_CA"
ENV_CERT = "MABEAM_TLS_CERT"
ENV_KEY = "MABEAM_TLS_KEY"
ENV_SERVER_NAME = "MABEAM_TLS_SERVER_NAME"


@dataclass(frozen=True)
class ClientSecurity:
    """A token and/or TLS files (paths); empty fields are off. See the module docstring."""

    token: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    server_name: str = ""

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("a client certificate needs its key (tls_cert and tls_key together)")
        if self.tls_cert and not self.tls_ca:
            raise ValueError("a client certificate is sent over TLS: give tls_ca (the servers' CA) too")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClientSecurity:
        """Read the ``MABEAM_TOKEN``/``MABEAM_TOKEN_FILE`` and ``MABEAM_TLS_*`` variables."""
        environ = os.environ if env is None else env
        token = environ.get(ENV_TOKEN, "").strip()
        if not token and environ.get(ENV_TOKEN_FILE):
            token = Path(environ[ENV_TOKEN_FILE]).read_text().strip()
        return cls(token=token, tls_ca=environ.get(ENV_CA, ""), tls_cert=environ.get(ENV_CERT, ""),
                   tls_key=environ.get(ENV_KEY, ""), server_name=environ.get(ENV_SERVER_NAME, ""))

    @classmethod
    def default(cls) -> ClientSecurity:
        """The process default: set by :func:`set_default` (meshctl's flags), else from the environment."""
        global _DEFAULT
        if _DEFAULT is None:
            _DEFAULT = cls.from_env()
        return _DEFAULT

    @property
    def tls(self) -> bool:
        """True when channels use TLS."""
        return bool(self.tls_ca)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata carrying the token (empty without one)."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """TLS credentials (with the client certificate when given), plus the token as call credentials."""
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(self.tls_ca).read_bytes(),
            private_key=Path(self.tls_key).read_bytes() if self.tls_key else None,
            certificate_chain=Path(self.tls_cert).read_bytes() if self.tls_cert else None)
        if self.token:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(self.token))
        return credentials


_DEFAULT: ClientSecurity | None = None


def set_default(security: ClientSecurity | None) -> None:
    """Make ``security`` what clients built without one use (None: read the environment again)."""
    global _DEFAULT
    _DEFAULT = security


class _TokenInterceptor(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[misc]
                        grpc.aio.StreamUnaryClientInterceptor, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    """Adds ``authorization: Bearer <token>`` to every call of a plaintext channel (dev clusters on loopback)."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(tuple(details.metadata or ()) + self._metadata))
        return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                          details.wait_for_ready)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def open_channel(endpoint: str, security: ClientSecurity | None = None,
                 options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """A grpc.aio channel to ``endpoint`` with ``security`` (default: :meth:`ClientSecurity.default`)."""
    security = security if security is not None else ClientSecurity.default()
    opts = list(options)
    if security.tls:
        if security.server_name:
            opts.append(("grpc.ssl_target_name_override", security.server_name))
        return grpc.aio.secure_channel(endpoint, security.channel_credentials(), options=opts)
    if security.token:
        return grpc.aio.insecure_channel(endpoint, options=opts, interceptors=[_TokenInterceptor(security.metadata())])
    return grpc.aio.insecure_channel(endpoint, options=opts)
