"""Daemon configuration, the same way for every daemon.

Each daemon has one pydantic model; :func:`load_model` builds it from a TOML
file, ``<PREFIX>_<FIELD>`` environment variables and explicit overrides (flags),
in rising precedence, merging nested tables (``[dataplane]``) key by key. A bad
value raises :class:`ConfigError` whose message has one line per bad field,
naming it — the daemons print it and exit with code 2.
"""

from __future__ import annotations

import json
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mabeam.ids import ID_RE as ID_RE  # re-exported: the one id rule (mabeam/ids.py)
from mabeam.ids import ID_RULE as ID_RULE
from mabeam.logs import SECRET_NAME

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """The configuration is invalid; the message names each bad field."""


def describe(daemon: str, error: ValidationError) -> str:
    """One line per problem, naming the field (dotted for nested tables) and the value given."""
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(config)"
        given = problem.get("input")
        # The message goes to stderr, i.e. the journal: a bad secret (a token, a key) is named, never shown.
        secret = any(SECRET_NAME.search(str(part)) for part in problem["loc"])
        shown = "" if isinstance(given, dict) else " (the value is not shown)" if secret else f" (got {given!r})"
        lines.append(f"  {where}: {problem['msg']}{shown}")
    return f"invalid {daemon} config:\n" + "\n".join(lines)


#: Fields whose environment value ``off``, ``none`` or empty means null (the feature is disabled).
NULLABLE_ENV = frozenset({"metrics_port"})


def default_env_value(name: str, raw: str) -> Any:
    """An environment value: JSON for objects and lists (``{"a": 1}``, ``[1, 2]``), null for ``off`` in a
    nullable field (:data:`NULLABLE_ENV`), else the raw string."""
    if name in NULLABLE_ENV and raw.lower() in {"", "none", "off"}:
        return None
    if raw[:1] in "{[":
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if value is None:
            continue
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_model(model: type[M], *, daemon: str, env_prefix: str, file: str | os.PathLike[str] | None = None,
               env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None,
               env_value: Callable[[str, str], Any] = default_env_value) -> M:
    """Build `model` from a TOML file, ``<env_prefix>_<FIELD>`` variables and overrides; ConfigError on failure."""
    data: dict[str, Any] = {}
    if file:
        try:
            with open(file, "rb") as handle:
                data = tomllib.load(handle)
        except OSError as error:
            raise ConfigError(f"cannot read {daemon} config file {file}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{daemon} config file {file} is not valid TOML: {error}") from None
    environ = os.environ if env is None else env
    from_env = {name: env_value(name, raw) for name in model.model_fields
                if (raw := environ.get(f"{env_prefix}_{name.upper()}")) is not None}
    data = _merge(_merge(data, from_env), overrides or {})
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(describe(daemon, error)) from None


def check_endpoints(value: Any) -> Any:
    """A pydantic before-validator body for ``HOST:PORT[,HOST:PORT...]`` lists (etcd endpoints)."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list):
        if not value:
            raise ValueError("at least one endpoint is required")
        for endpoint in value:
            host, _, port = str(endpoint).rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{endpoint!r} is not HOST:PORT")
    return value


def check_identifier(value: str) -> str:
    """A pydantic validator body for ids (node, cluster, tenant, role)."""
    if not ID_RE.match(value):
        raise ValueError(f"{value!r} is not a valid id: use {ID_RULE}")
    return value


class NodeDaemonConfig(BaseModel):
    """The settings meshd and the coordinator share (one node of a cluster on etcd, serving gRPC and /metrics).

    A daemon's model subclasses it, adds its own fields and redefines a shared one only to change
    its default (meshd's gRPC port is 7100, the coordinator's 7200).
    """

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
    grpc_port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    advertise_host: str = Field("", description="Host published to peers and clients; defaults to grpc_host.")
    metrics_port: int | None = Field(0, ge=0, le=65535, description="Prometheus /metrics port (on grpc_host); "
                                                                     "0 picks a free one; null disables.")
    lease_ttl: int = Field(3, ge=2, le=300, description="etcd lease TTL, seconds.")
    shutdown_grace: float = Field(2.0, ge=0, le=60, description="Seconds in-flight calls get at shutdown.")

    @field_validator("node_id", "cluster")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return check_identifier(value)

    @field_validator("etcd", mode="before")
    @classmethod
    def _endpoints(cls, value: Any) -> Any:
        return check_endpoints(value)

    @property
    def advertised(self) -> str:
        """The host peers and clients use to reach this node."""
        return self.advertise_host or self.grpc_host
