"""The ``[security]`` table every daemon's config has, and its command-line flags.

::

    [security]
    token_keys = "/etc/mabeam/token-keys"   # directory of <kid>.pub files that verify bearer tokens
    token_keys_etcd = true                   # ...and/or the keys published in etcd (mabeam keys publish)
    tls_cert = "/etc/mabeam/tls/node.crt"    # mTLS on gRPC: this daemon's certificate and key,
    tls_key = "/etc/mabeam/tls/node.key"
    tls_ca = "/etc/mabeam/tls/ca.crt"        # and the CA its clients' certificates must chain to

Tokens are on when a key source is configured; mTLS when the three TLS files are.
A daemon serves a non-loopback address only with both (:func:`mabeam.security.server.bind_grpc`).
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SecurityConfig(BaseModel):
    """Tokens and mTLS for one daemon's gRPC server (every field optional; none set: security off)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token_keys: str = Field("", description="Directory of <kid>.pub Ed25519 public keys that verify bearer tokens "
                                            "(re-read every 2 s: rotate by adding, later removing, a file).")
    token_keys_etcd: bool = Field(False, description="Also trust the keys under /mabeam/<cluster>/security/"
                                                     "token_keys/ in etcd (followed live).")
    tls_cert: str = Field("", description="PEM certificate of this daemon's gRPC server (mTLS).")
    tls_key: str = Field("", description="PEM private key of tls_cert.")
    tls_ca: str = Field("", description="PEM CA certificate(s) clients' certificates must chain to (required with "
                                        "tls_cert: every client presents a certificate).")

    @model_validator(mode="after")
    def _consistent(self) -> SecurityConfig:
        tls = [bool(self.tls_cert), bool(self.tls_key), bool(self.tls_ca)]
        if any(tls) and not all(tls):
            raise ValueError("mTLS needs all of tls_cert, tls_key and tls_ca")
        for name in ("tls_cert", "tls_key", "tls_ca"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise ValueError(f"{name}: no such file {path!r}")
        if self.token_keys and not os.path.isdir(self.token_keys):
            raise ValueError(f"token_keys: no such directory {self.token_keys!r}")
        return self

    @property
    def auth_enabled(self) -> bool:
        """True when requests need a bearer token."""
        return bool(self.token_keys) or self.token_keys_etcd

    @property
    def tls_enabled(self) -> bool:
        """True when gRPC runs over TLS with client certificates required."""
        return bool(self.tls_cert)

    @property
    def secure(self) -> bool:
        """Tokens and mTLS both on: what a non-loopback address requires."""
        return self.auth_enabled and self.tls_enabled

