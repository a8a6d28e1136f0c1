"""The keys, certificates and tokens of a secure dev cluster (``mabeam up --secure``, tests, demo, benches).

In ``<run dir>/security``:

- ``issuer/dev.key`` (+ ``.pub``) signs tokens; ``token-keys/dev.pub`` is what every daemon trusts;
- ``tls/`` holds a CA, one certificate per node (meshd, agentd and coordinator of the node serve
  with it) and a ``client`` certificate for SDKs, meshctl and benches.

:meth:`DevSecurity.token` issues tokens for any tenant and roles; :meth:`DevSecurity.client`
gives the SDK's :class:`~mabeam_client.security.ClientSecurity` for one; :meth:`DevSecurity.env`
the ``MABEAM_TOKEN`` / ``MABEAM_TLS_*`` variables for a subprocess (meshctl, another SDK).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from mabeam.security.certs import write_pki
from mabeam.security.keyfiles import load_private_key, write_keypair
from mabeam.security.tokens import Role, issue
from mabeam_client.security import ClientSecurity

KID = "dev"
CLIENT = "client"
LOOPBACK = ("127.0.0.1", "localhost")


class DevSecurity:
    """Token keys, a CA, node and client certificates, and tokens for one dev cluster."""

    def __init__(self, directory: str | Path, cluster: str, nodes: Iterable[str] | Mapping[str, Iterable[str]],
                 tls: bool = True) -> None:
        """``nodes``: node ids (certificates for 127.0.0.1 and localhost), or node id -> the addresses it serves."""
        self.directory = Path(directory)
        self.cluster = cluster
        self.tls = tls
        issuer = self.directory / "issuer"
        self.token_keys = self.directory / "token-keys"
        self.token_keys.mkdir(parents=True, exist_ok=True)
        if not (issuer / f"{KID}.key").exists():
            write_keypair(issuer, KID)
        shutil.copy(issuer / f"{KID}.pub", self.token_keys / f"{KID}.pub")
        self._signing_key = load_private_key(issuer / f"{KID}.key")
        self.pki = self.directory / "tls"
        names: dict[str, Iterable[str]] = (dict(nodes) if isinstance(nodes, Mapping)
                                           else {node: LOOPBACK for node in nodes})
        self.certs = write_pki(self.pki, {**names, CLIENT: LOOPBACK}) if tls else {}

    @property
    def ca(self) -> Path:
        """The CA certificate every daemon and client trusts."""
        return self.pki / "ca.crt"

    def toml(self, node_id: str) -> str:
        """The ``[security]`` table of one node's daemons (config files: the test bed, deploy examples)."""
        lines = ["[security]", f'token_keys = "{self.token_keys}"']
        if self.tls:
            cert, key = self.certs[node_id]
            lines += [f'tls_cert = "{cert}"', f'tls_key = "{key}"', f'tls_ca = "{self.ca}"']
        return "\n".join(lines) + "\n"

    def daemon_flags(self, node_id: str) -> list[str]:
        """The ``[security]`` flags of one node's daemons."""
        flags = ["--token-keys", str(self.token_keys)]
        if self.tls:
            cert, key = self.certs[node_id]
            flags += ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(self.ca)]
        return flags

    def token(self, tenant: str = "default", roles: Iterable[str | Role] = ("admin",), subject: str = "dev",
              ttl_s: float = 3600.0, now: float | None = None) -> str:
        """A token of this cluster for ``tenant`` with ``roles``."""
        return issue(self._signing_key, KID, cluster=self.cluster, tenant=tenant, roles=roles, subject=subject,
                     ttl_s=ttl_s, now=now)

    def client(self, token: str | None = None, tenant: str = "default", roles: Iterable[str | Role] = ("admin",),
               subject: str = "dev") -> ClientSecurity:
        """SDK credentials: the client certificate and ``token`` (default: a fresh one for tenant and roles)."""
        if token is None:
            token = self.token(tenant, roles, subject)
        if not self.tls:
            return ClientSecurity(token=token)
        cert, key = self.certs[CLIENT]
        return ClientSecurity(token=token, tls_ca=str(self.ca), tls_cert=str(cert), tls_key=str(key))

    def env(self, token: str | None = None, tenant: str = "default", roles: Iterable[str | Role] = ("admin",)) -> dict[str, str]:
        """``MABEAM_TOKEN`` and ``MABEAM_TLS_*`` for a subprocess (meshctl, an SDK of another language)."""
        client = self.client(token, tenant, roles)
        env = {"MABEAM_TOKEN": client.token}
        if client.tls:
            env.update(MABEAM_TLS_CA=client.tls_ca, MABEAM_TLS_CERT=client.tls_cert, MABEAM_TLS_KEY=client.tls_key)
        return env
