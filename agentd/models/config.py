"""The ``[models]`` section of agentd's config: providers, models and prices, routes, resilience, budgets.

Every knob has a default documented in docs/models.md. API keys come from an
environment variable (``api_key_env``) or a file (``api_key_file``), are held as
:class:`pydantic.SecretStr` and never logged. A bad value stops agentd at start
with a message naming the field (``models.providers.local.kind: ...``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from mabeam.config import check_identifier


class ProviderConfig(BaseModel):
    """One provider endpoint: its protocol, address, key, timeouts, bulkhead, rate limits and breaker."""

    model_config = ConfigDict(extra="forbid")

    #: ``openai`` (Chat Completions: OpenAI, vLLM, llama.cpp, Ollama, LiteLLM) or ``anthropic`` (Messages).
    kind: Literal["openai", "anthropic"] = "openai"
    #: e.g. ``https://api.openai.com/v1`` (openai) or ``https://api.anthropic.com`` (anthropic).
    base_url: str
    api_key_env: str = ""
    api_key_file: str = ""
    #: Extra HTTP headers sent with every request (e.g. an organisation id).
    headers: dict[str, str] = Field(default_factory=dict)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    #: Longest silence between two bytes of an answer (a hang is caught by this or the attempt timeout).
    read_timeout_s: float = Field(default=60.0, gt=0)
    max_connections: int = Field(default=64, ge=1, le=10_000)
    #: Bulkhead: calls in flight to this provider, and calls waiting for a slot, before refusing.
    max_concurrent: int = Field(default=32, ge=1, le=10_000)
    max_queued: int = Field(default=256, ge=0, le=1_000_000)
    #: Rate limits of this provider (0: none).
    requests_per_minute: float = Field(default=0, ge=0)
    tokens_per_minute: float = Field(default=0, ge=0)
    #: Circuit breaker: failures within the window that open it, and how long it stays open.
    breaker_failures: int = Field(default=5, ge=1)
    breaker_window_s: float = Field(default=30.0, gt=0)
    breaker_open_s: float = Field(default=10.0, gt=0)
    #: openai only: the field that carries the output limit (newer OpenAI models want ``max_completion_tokens``).
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    #: anthropic only: the ``anthropic-version`` header.
    anthropic_version: str = "2023-06-01"

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    def api_key(self) -> SecretStr | None:
        """The key from the environment or the file; ValueError naming the source when it is missing."""
        if self.api_key_env:
            value = os.environ.get(self.api_key_env)
            if not value:
                raise ValueError(f"environment variable {self.api_key_env} (api_key_env) is not set")
            return SecretStr(value)
        if self.api_key_file:
            try:
                return SecretStr(Path(self.api_key_file).read_text().strip())
            except OSError as error:
                raise ValueError(f"cannot read api_key_file {self.api_key_file}: {error.strerror}") from None
        return None


class ModelEntry(BaseModel):
    """A model as agents name it: which provider serves it, the provider's id for it, and its price."""

    model_config = ConfigDict(extra="forbid")

    provider: str
    #: The provider's model id; empty means the entry's own name.
    name: str = ""
    input_per_1k_usd: float = Field(default=0.0, ge=0)
    output_per_1k_usd: float = Field(default=0.0, ge=0)
    #: max_tokens sent when a request gives none (so the budget's worst case is known).
    max_output_tokens: int = Field(default=1024, ge=1, le=1_000_000)


class RouteConfig(BaseModel):
    """A route: try ``primary``, then each of ``fallbacks`` when its breaker is open or its retries are spent."""

    model_config = ConfigDict(extra="forbid")

    primary: str
    fallbacks: list[str] = Field(default_factory=list)


class RetrySettings(BaseModel):
    """Retries with exponential backoff and full jitter; per-attempt and total deadlines."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(default=3, ge=1, le=20)
    base_s: float = Field(default=0.2, ge=0)
    cap_s: float = Field(default=5.0, ge=0)
    #: A Retry-After longer than this is not waited for: the route falls back instead.
    max_retry_after_s: float = Field(default=30.0, ge=0)
    attempt_timeout_s: float = Field(default=60.0, gt=0)
    total_timeout_s: float = Field(default=120.0, gt=0)


class CacheSettings(BaseModel):
    """The opt-in response cache."""

    model_config = ConfigDict(extra="forbid")

    max_entries: int = Field(default=1024, ge=0)
    ttl_s: float = Field(default=300.0, gt=0)


class Limits(BaseModel):
    """Token and cost limits of a budget (0: unlimited)."""

    model_config = ConfigDict(extra="forbid")

    tokens: int = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0)


class BudgetSettings(BaseModel):
    """Where budgets live and their limits."""

    model_config = ConfigDict(extra="forbid")

    #: ``memory`` (this agentd only) or ``etcd`` (shared by every agentd of the cluster).
    store: Literal["memory", "etcd"] = "memory"
    etcd_endpoints: list[str] = Field(default_factory=list)
    #: The etcd key prefix's cluster name (``/mabeam/<cluster>/budgets/...``).
    cluster: str = "default"
    #: Limits per tenant; tenants not listed get ``default_tenant``.
    tenants: dict[str, Limits] = Field(default_factory=dict)
    default_tenant: Limits = Field(default_factory=Limits)
    #: Limits of every run (a call that names a run counts against both).
    per_run: Limits = Field(default_factory=Limits)
    #: Rate limits per tenant (0: none).
    tenant_requests_per_minute: float = Field(default=0, ge=0)
    tenant_tokens_per_minute: float = Field(default=0, ge=0)

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, value: str) -> str:
        return check_identifier(value)

    @model_validator(mode="after")
    def _endpoints(self) -> BudgetSettings:
        if self.store == "etcd" and not self.etcd_endpoints:
            raise ValueError("store = 'etcd' needs etcd_endpoints")
        return self


class ModelsConfig(BaseModel):
    """The whole ``[models]`` section; empty means agentd serves no models."""

    model_config = ConfigDict(extra="forbid")

    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: dict[str, ModelEntry] = Field(default_factory=dict)
    routes: dict[str, RouteConfig] = Field(default_factory=dict)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)

    @model_validator(mode="after")
    def _references(self) -> ModelsConfig:
        for name, entry in self.models.items():
            if entry.provider not in self.providers:
                raise ValueError(f"models.{name}.provider: no provider named {entry.provider!r}")
        for name, route in self.routes.items():
            if name in self.models:
                raise ValueError(f"routes.{name}: a model has the same name")
            for target in (route.primary, *route.fallbacks):
                if target not in self.models:
                    raise ValueError(f"routes.{name}: no model named {target!r}")
        return self
