"""The coordinator daemon's configuration: one pydantic model from a TOML file, the environment and flags.

Precedence: flags over environment (``COORDINATOR_<FIELD>``) over the TOML
file over defaults. A bad value stops startup with a message naming the field.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
ID_RULE = "1-64 characters of letters, digits and _.-, starting with a letter, digit or _"


class ConfigError(Exception):
    """The configuration is invalid; the message names each bad field."""


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
    lease_ttl: int = Field(2, ge=2, le=300, description="Election lease TTL, seconds (failover takes about this).")
    shutdown_grace: float = Field(1.0, ge=0, le=60, description="Seconds in-flight calls get at shutdown.")

    @field_validator("node_id", "cluster")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not ID_RE.match(value):
            raise ValueError(f"{value!r} is not a valid id: use {ID_RULE}")
        return value

    @field_validator("etcd", mode="before")
    @classmethod
    def _endpoints(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            if not value:
                raise ValueError("at least one etcd endpoint is required")
            for endpoint in value:
                host, _, port = str(endpoint).rpartition(":")
                if not host or not port.isdigit() or not 0 < int(port) < 65536:
                    raise ValueError(f"{endpoint!r} is not HOST:PORT")
        return value

    @property
    def advertised(self) -> str:
        """The host clients use to reach this node."""
        return self.advertise_host or self.grpc_host


def _describe(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(config)"
        lines.append(f"  {where}: {problem['msg']} (got {problem.get('input')!r})")
    return "invalid coordinator config:\n" + "\n".join(lines)


def load(file: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> CoordinatorConfig:
    """Build the config from a TOML file, ``COORDINATOR_*`` variables and explicit overrides."""
    data: dict[str, Any] = {}
    if file:
        try:
            with open(file, "rb") as handle:
                data.update(tomllib.load(handle))
        except OSError as error:
            raise ConfigError(f"cannot read config file {file}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {file} is not valid TOML: {error}") from None
    env = os.environ if env is None else env
    for name in CoordinatorConfig.model_fields:
        raw = env.get(f"COORDINATOR_{name.upper()}")
        if raw is not None:
            data[name] = raw
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return CoordinatorConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None


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
    parser.add_argument("--lease-ttl", dest="lease_ttl")
    args = parser.parse_args(argv)
    return args.config, {k: v for k, v in vars(args).items() if k != "config" and v is not None}
