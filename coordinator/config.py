"""The coordinator daemon's configuration: one pydantic model from a TOML file, the environment and flags.

Precedence: flags over environment (``COORDINATOR_<FIELD>``) over the TOML
file over defaults. A bad value stops startup with a message naming the field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import Field, field_validator

from mabeam.config import (
    ConfigError as ConfigError,  # re-exported: callers catch coordinator.config.ConfigError
)
from mabeam.config import NodeDaemonConfig, load_model
from mabeam.security.config import SecurityConfig


class CoordinatorConfig(NodeDaemonConfig):
    """Everything a coordinator needs to start, active or standby (the shared node settings, then its own)."""

    grpc_port: int = Field(7200, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    lease_ttl: int = Field(2, ge=2, le=300, description="Election lease TTL, seconds (failover takes about this).")
    shutdown_grace: float = Field(1.0, ge=0, le=60, description="Seconds in-flight calls get at shutdown.")
    mechanism_modules: list[str] = Field(
        default_factory=list, description="Extra mechanism kinds to load: dotted module names or .py paths "
                                          "(installed 'mabeam.mechanisms' entry points load too).")
    security: SecurityConfig = Field(default_factory=SecurityConfig,
                                     description="Tokens and mTLS on gRPC ([security] table; see docs/security.md).")

    @field_validator("mechanism_modules", mode="before")
    @classmethod
    def _modules(cls, value: Any) -> Any:
        if isinstance(value, str):  # COORDINATOR_MECHANISM_MODULES=a,b
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


def load(file: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> CoordinatorConfig:
    """Build the config from a TOML file, ``COORDINATOR_*`` variables and explicit overrides."""
    return load_model(CoordinatorConfig, daemon="coordinator", env_prefix="COORDINATOR", file=file, env=env,
                      overrides=overrides)
