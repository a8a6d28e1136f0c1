"""meshd's configuration: one pydantic model from a TOML file, the environment and flags.

Precedence: flags over environment (``MESHD_<FIELD>``, e.g. ``MESHD_LEASE_TTL=5``)
over the TOML file over defaults. A bad value stops startup with a message
that names the field (:class:`ConfigError`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import Field, field_validator

from mabeam.config import ID_RE, ID_RULE, NodeDaemonConfig, default_env_value, load_model
from mabeam.config import ConfigError as ConfigError  # re-exported: callers catch meshd.config.ConfigError
from mabeam.security.config import SecurityConfig
from meshd.dataplane.config import DataPlaneConfig


class MeshdConfig(NodeDaemonConfig):
    """Everything meshd needs to start (the shared node settings, then meshd's). Field docs are the reference
    for the TOML keys."""

    grpc_port: int = Field(7100, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    lease_ttl: int = Field(3, ge=2, le=300, description="Membership lease TTL, seconds (keepalive at TTL/3).")
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form node labels.")
    tenants: list[str] = Field(default_factory=lambda: ["default"],
                               description="Tenants this node makes sure exist at startup.")
    dataplane: DataPlaneConfig = Field(default_factory=DataPlaneConfig,
                                       description="The ZeroMQ data plane ([dataplane] table; see docs/dataplane.md).")
    security: SecurityConfig = Field(default_factory=SecurityConfig,
                                     description="Tokens and mTLS on gRPC ([security] table; see docs/security.md).")

    @field_validator("tenants")
    @classmethod
    def _tenants(cls, value: list[str]) -> list[str]:
        for tenant in value:
            if not ID_RE.match(tenant):
                raise ValueError(f"tenant {tenant!r} is not a valid id: use {ID_RULE}")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 32 or sum(len(k) + len(v) for k, v in value.items()) > 4096:
            raise ValueError("at most 32 labels and 4 KiB in total")
        return value


def load(file: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> MeshdConfig:
    """Build the config from a TOML file, ``MESHD_*`` environment variables and explicit overrides."""
    return load_model(MeshdConfig, daemon="meshd", env_prefix="MESHD", file=file, env=env, overrides=overrides,
                      env_value=env_value)


def env_value(name: str, raw: str) -> Any:
    """An ``MESHD_<FIELD>`` value: labels as ``k=v,k=v``, tenants as ``a,b``, the rest as usual."""
    if name in {"labels"}:
        return dict(part.split("=", 1) for part in raw.split(",") if "=" in part)
    if name in {"tenants"}:
        return [part for part in raw.split(",") if part]
    return default_env_value(name, raw)


def example_toml() -> str:
    """A commented config file with every field at its default (for docs and deploy/)."""
    lines = []
    for name, info in MeshdConfig.model_fields.items():
        lines.append(f"# {info.description}")
        default = info.get_default(call_default_factory=True)
        lines.append(f"# {name} = {default!r}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - prints the reference config
    print(example_toml(), end="")
