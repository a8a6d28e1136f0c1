"""The coordinator daemon's configuration: one pydantic model from a TOML file, the environment and flags.

Precedence: flags over environment (``COORDINATOR_<FIELD>``) over the TOML
file over defaults. A bad value stops startup with a message naming the field.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mabeam.config import (
    ConfigError as ConfigError,  # re-exported: callers catch coordinator.config.ConfigError
)
from mabeam.config import check_endpoints, check_identifier, load_model


class CoordinatorConfig(BaseModel):
    """Everything a coordinator needs to start (active or standby)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_id: str = Field(default_factory=lambda: socket.gethostname().split(".")[0],
                         description="Unique id of this node in the cluster.")
    cluster: str = Field("default", description="Cluster name; keys live under /mabeam/<cluster>/coordinator/.")
    etcd: list[str] = Field(default_factory=lambda: ["127.0.0.1:2379"], description="etcd endpoints, host:port.")
    etcd_timeout: float = Field(5.0, gt=0, le=60, description="Timeout of each etcd request, seconds.")
    etcd_connect_timeout: float = Field(10.0, gt=0, le=600, description="How long startup waits for etcd, seconds.")
    grpc_host: str = Field("127.0.0.1", description="Address the gRPC server binds (loopback by default).")
    grpc_port: int = Field(7200, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    advertise_host: str = Field("", description="Host published to clients; defaults to grpc_host.")
    metrics_port: int | None = Field(0, ge=0, le=65535,
                                     description="Prometheus /metrics port (on grpc_host); 0 picks a free one; "
                                                 "null disables.")
    lease_ttl: int = Field(2, ge=2, le=300, description="Election lease TTL, seconds (failover takes about this).")
    shutdown_grace: float = Field(1.0, ge=0, le=60, description="Seconds in-flight calls get at shutdown.")
    mechanism_modules: list[str] = Field(
        default_factory=list, description="Extra mechanism kinds to load: dotted module names or .py paths "
                                          "(installed 'mabeam.mechanisms' entry points load too).")

    @field_validator("node_id", "cluster")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return check_identifier(value)

    @field_validator("etcd", mode="before")
    @classmethod
    def _endpoints(cls, value: Any) -> Any:
        return check_endpoints(value)

    @field_validator("mechanism_modules", mode="before")
    @classmethod
    def _modules(cls, value: Any) -> Any:
        if isinstance(value, str):  # COORDINATOR_MECHANISM_MODULES=a,b
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def advertised(self) -> str:
        """The host clients use to reach this node."""
        return self.advertise_host or self.grpc_host


def load(file: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> CoordinatorConfig:
    """Build the config from a TOML file, ``COORDINATOR_*`` variables and explicit overrides."""
    return load_model(CoordinatorConfig, daemon="coordinator", env_prefix="COORDINATOR", file=file, env=env,
                      overrides=overrides)


def parse_args(argv: Sequence[str] | None = None) -> tuple[str | None, dict[str, Any]]:
    """The command line: returns (config file, overrides)."""
    parser = argparse.ArgumentParser(prog="coordinator", description="The mabeam coordinator (active/standby).")
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument("--node-id", dest="node_id")
    parser.add_argument("--cluster")
    parser.add_argument("--etcd", help="HOST:PORT[,HOST:PORT...]")
    parser.add_argument("--grpc-host", dest="grpc_host")
    parser.add_argument("--grpc-port", dest="grpc_port")
    parser.add_argument("--advertise-host", dest="advertise_host")
    parser.add_argument("--metrics-port", dest="metrics_port")
    parser.add_argument("--lease-ttl", dest="lease_ttl")
    parser.add_argument("--mechanism-module", dest="mechanism_modules", action="append",
                        help="extra mechanism kinds: a dotted module name or a .py path (repeatable)")
    args = parser.parse_args(argv)
    return args.config, {k: v for k, v in vars(args).items() if k != "config" and v is not None}
