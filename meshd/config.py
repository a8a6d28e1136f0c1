"""meshd's configuration: one pydantic model from a TOML file, the environment and flags.

Precedence: flags over environment (``MESHD_<FIELD>``, e.g. ``MESHD_LEASE_TTL=5``)
over the TOML file over defaults. A bad value stops startup with a message
that names the field (:class:`ConfigError`).
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mabeam.config import ID_RE, ID_RULE, check_endpoints, check_identifier, default_env_value, load_model
from mabeam.config import ConfigError as ConfigError  # re-exported: callers catch meshd.config.ConfigError
from meshd.dataplane.config import DataPlaneConfig


class MeshdConfig(BaseModel):
    """Everything meshd needs to start. Field docs are the reference for the TOML keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_id: str = Field(default_factory=lambda: socket.gethostname().split(".")[0],
                         description="Unique id of this node in the cluster.")
    cluster: str = Field("default", description="Cluster name; the etcd key prefix is /mabeam/<cluster>/.")
    etcd: list[str] = Field(default_factory=lambda: ["127.0.0.1:2379"],
                            description="etcd client endpoints, host:port (several for an etcd cluster).")
    etcd_timeout: float = Field(5.0, gt=0, le=60, description="Timeout of each etcd request, seconds.")
    etcd_connect_timeout: float = Field(10.0, gt=0, le=600,
                                        description="How long startup waits for etcd before failing, seconds.")
    grpc_host: str = Field("127.0.0.1", description="Address the gRPC server binds (loopback by default).")
    grpc_port: int = Field(7100, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    advertise_host: str = Field("", description="Host published to peers; defaults to grpc_host.")
    metrics_port: int | None = Field(0, ge=0, le=65535,
                                     description="Prometheus /metrics port; 0 picks a free one; null disables.")
    lease_ttl: int = Field(3, ge=2, le=300, description="Membership lease TTL, seconds (keepalive at TTL/3).")
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form node labels.")
    tenants: list[str] = Field(default_factory=lambda: ["default"],
                               description="Tenants this node makes sure exist at startup.")
    shutdown_grace: float = Field(2.0, ge=0, le=60, description="Seconds in-flight calls get at shutdown.")
    dataplane: DataPlaneConfig = Field(default_factory=DataPlaneConfig,
                                       description="The ZeroMQ data plane ([dataplane] table; see docs/dataplane.md).")

    @field_validator("node_id", "cluster")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return check_identifier(value)

    @field_validator("tenants")
    @classmethod
    def _tenants(cls, value: list[str]) -> list[str]:
        for tenant in value:
            if not ID_RE.match(tenant):
                raise ValueError(f"tenant {tenant!r} is not a valid id: use {ID_RULE}")
        return value

    @field_validator("etcd", mode="before")
    @classmethod
    def _endpoints(cls, value: Any) -> Any:
        return check_endpoints(value)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 32 or sum(len(k) + len(v) for k, v in value.items()) > 4096:
            raise ValueError("at most 32 labels and 4 KiB in total")
        return value

    @property
    def advertised(self) -> str:
        """The host peers and clients use to reach this node."""
        return self.advertise_host or self.grpc_host


def load(file: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> MeshdConfig:
    """Build the config from a TOML file, ``MESHD_*`` environment variables and explicit overrides."""
    return load_model(MeshdConfig, daemon="meshd", env_prefix="MESHD", file=file, env=env, overrides=overrides,
                      env_value=_env_value)


def _env_value(name: str, raw: str) -> Any:
    if name in {"labels"}:
        return dict(part.split("=", 1) for part in raw.split(",") if "=" in part)
    if name in {"tenants"}:
        return [part for part in raw.split(",") if part]
    if name == "metrics_port" and raw.lower() in {"", "none", "off"}:
        return None
    return default_env_value(name, raw)


def parse_args(argv: Sequence[str] | None = None) -> tuple[str | None, dict[str, Any]]:
    """meshd's command line: returns (config file, overrides)."""
    parser = argparse.ArgumentParser(prog="meshd", description="The mabeam mesh daemon (one per host).")
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument("--node-id", dest="node_id")
    parser.add_argument("--cluster")
    parser.add_argument("--etcd", help="HOST:PORT[,HOST:PORT...]")
    parser.add_argument("--grpc-host", dest="grpc_host")
    parser.add_argument("--grpc-port", dest="grpc_port")
    parser.add_argument("--advertise-host", dest="advertise_host")
    parser.add_argument("--metrics-port", dest="metrics_port")
    parser.add_argument("--lease-ttl", dest="lease_ttl")
    parser.add_argument("--label", action="append", default=[], help="KEY=VALUE (repeatable)")
    parser.add_argument("--data-port", dest="data_port", help="first of the 4 data-plane ports (0: ephemeral)")
    parser.add_argument("--attach", dest="attach", help="local attach address (ipc://PATH or tcp://127.0.0.1:PORT)")
    parser.add_argument("--curve", action="store_true", default=None, help="CurveZMQ on the data plane")
    args = parser.parse_args(argv)
    dataplane_flags = {"data_port": "base_port", "attach": "attach_address", "curve": "curve"}
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items()
                                 if k not in {"config", "label", *dataplane_flags} and v is not None}
    if args.label:
        overrides["labels"] = dict(item.split("=", 1) for item in args.label if "=" in item)
    dataplane = {field: getattr(args, flag) for flag, field in dataplane_flags.items() if getattr(args, flag) is not None}
    if dataplane:
        overrides["dataplane"] = dataplane
    return args.config, overrides


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
