"""agentd's configuration: one pydantic model, from a TOML file, then ``AGENTD_*`` environment, then flags.

A bad value stops startup with a message naming the field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentd.models.config import ModelsConfig
from agentd.runs.config import RunsConfig
from mabeam.config import ConfigError as ConfigError  # re-exported: callers catch agentd.config.ConfigError
from mabeam.config import check_endpoints, check_identifier, load_model
from mabeam.security.config import SecurityConfig


class AgentdConfig(BaseModel):
    """Every setting of the agentd daemon."""

    model_config = ConfigDict(extra="forbid")

    node_id: str = Field(default="", max_length=64)
    #: gRPC AgentService address; port 0 picks a free one (loopback by default).
    grpc_address: str = "127.0.0.1:7300"
    #: Prometheus /metrics address; empty disables it.
    metrics_address: str = ""
    #: Shared worker processes; 0 means one per core.
    workers: int = Field(default=0, ge=0, le=256)
    #: Directory for the checkpoint store; empty means a temporary directory.
    data_dir: str = ""
    codec: Literal["msgpack", "json"] = "msgpack"
    mailbox_capacity: int = Field(default=1000, ge=1, le=10_000_000)
    #: The watchdog names the agent holding a worker loop longer than this...
    block_warn_s: float = Field(default=0.5, gt=0)
    #: ...and kills and restarts the worker when its loop is silent longer than this.
    block_kill_s: float = Field(default=10.0, gt=0)
    #: The allow-list: agent type name -> "package.module:Class" (installed entry points are added).
    agent_types: dict[str, str] = Field(default_factory=dict)
    #: Also allow the example types (echo, counter, relay, escalating).
    examples: bool = False
    #: The host meshd's local attach address (ipc://... or tcp://127.0.0.1:PORT); empty runs agentd off the mesh.
    meshd_attach: str = ""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: Model providers, models, routes, resilience and budgets (docs/models.md); empty serves no models.
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    #: etcd client endpoints (HOST:PORT, several for an etcd cluster); empty runs agentd without durable runs.
    etcd: list[str] = Field(default_factory=list)
    #: The cluster whose etcd keys (/mabeam/<cluster>/...) agentd uses: run leases, the janitor's election,
    #: quotas; and whose tokens it accepts (their audience).
    cluster: str = "default"
    #: The HTTP face of durable runs (REST + Server-Sent Events); port 0 picks a free one; empty disables it.
    http_address: str = ""
    #: Durable runs (docs/runs.md): the store URL, leases, recovery, cancellation, retention.
    runs: RunsConfig = Field(default_factory=RunsConfig)
    #: The tool catalogue: tool name -> "package.module:attribute" (a function made a tool with @tool).
    tools: dict[str, str] = Field(default_factory=dict)
    #: Gate rules for every tool of this agentd: [{scope, subject, tool, verdict, reason}] (docs/tools.md).
    tool_policy: list[dict[str, str]] = Field(default_factory=list)
    #: LLM agents defined by configuration: type name -> {model, system_prompt, tools, policy, max_steps, ...}.
    llm_agents: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: Tokens and mTLS on gRPC ([security] table; docs/security.md).
    security: SecurityConfig = Field(default_factory=SecurityConfig)

    @field_validator("etcd", mode="before")
    @classmethod
    def _endpoints(cls, value: object) -> object:
        return check_endpoints(value) if value else value

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, value: str) -> str:
        return check_identifier(value)

    @field_validator("grpc_address", "metrics_address", "http_address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value and (":" not in value or not value.rsplit(":", 1)[1].isdigit()):
            raise ValueError("must look like host:port")
        return value

    @field_validator("agent_types", "tools")
    @classmethod
    def _paths(cls, value: dict[str, str]) -> dict[str, str]:
        for name, path in value.items():
            if ":" not in path:
                raise ValueError(f"agent type {name!r}: {path!r} must look like 'package.module:Class'")
        return value


def load_config(path: str | None = None, env: dict[str, str] | None = None,
                overrides: dict[str, Any] | None = None) -> AgentdConfig:
    """Merge file, ``AGENTD_<FIELD>`` environment variables and flag overrides; ConfigError names the field."""
    return load_model(AgentdConfig, daemon="agentd", env_prefix="AGENTD", file=path, env=env, overrides=overrides)
