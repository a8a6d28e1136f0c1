"""Building routers against the fake server for the model tests."""

from __future__ import annotations

from typing import Any

from agentd.models.config import ModelsConfig
from agentd.models.router import ModelRouter
from agentd.models.types import ChatRequest, Message
from mabeam.dev.fakellm.process import FakeLLMProcess


def models_config(llm: FakeLLMProcess, models: dict[str, dict[str, Any]] | None = None,
                  routes: dict[str, Any] | None = None, provider: dict[str, Any] | None = None,
                  retry: dict[str, Any] | None = None, budgets: dict[str, Any] | None = None,
                  kind: str = "openai") -> ModelsConfig:
    """A [models] section: provider "local" on the fake server; models default to fake-small/fake-large."""
    base = llm.openai_base if kind == "openai" else llm.url
    return ModelsConfig.model_validate({
        "providers": {"local": {"kind": kind, "base_url": base, **(provider or {})}},
        "models": models or {"small": {"provider": "local", "name": "fake-small", "input_per_1k_usd": 0.001,
                                       "output_per_1k_usd": 0.002, "max_output_tokens": 64}},
        "routes": routes or {},
        "retry": {"base_s": 0.01, "cap_s": 0.05, **(retry or {})},
        "budgets": budgets or {},
    })


def router(llm: FakeLLMProcess, **kw: Any) -> ModelRouter:
    """A router on the fake server (see models_config)."""
    return ModelRouter(models_config(llm, **kw))


def ask(model: str, text: str = "hello", **kw: Any) -> ChatRequest:
    """A one-message request."""
    return ChatRequest(model, (Message("user", text),), **kw)
