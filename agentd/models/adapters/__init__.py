"""Provider adapters over httpx: one attempt each, errors translated once (:mod:`.base`).

:func:`make_adapter` picks the adapter for a provider's ``kind``.
"""

from __future__ import annotations

import httpx

from agentd.models.adapters.anthropic import AnthropicAdapter
from agentd.models.adapters.base import Adapter
from agentd.models.adapters.openai import OpenAIAdapter
from agentd.models.config import ProviderConfig

KINDS: dict[str, type[Adapter]] = {"openai": OpenAIAdapter, "anthropic": AnthropicAdapter}


def make_adapter(name: str, config: ProviderConfig, transport: httpx.AsyncBaseTransport | None = None) -> Adapter:
    """The adapter for a configured provider."""
    return KINDS[config.kind](name, config, transport)


__all__ = ["Adapter", "AnthropicAdapter", "OpenAIAdapter", "make_adapter", "KINDS"]
