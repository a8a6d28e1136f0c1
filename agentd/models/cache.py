"""Canonical request hashing (cache keys, receipts) and a TTL + LRU response cache, pure (clock passed in).

A request's canonical form is JSON with sorted keys and no whitespace of every
field that changes the answer (model, messages, tools, schema, sampling, stop,
seed, max_tokens); ``metadata`` does not. Two requests that differ only in key
order or metadata hash the same.

Caching is opt-in per call and never applies to a non-zero temperature unless
the caller says so (:func:`cacheable`): a sampled answer is not "the" answer.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from agentd.models.types import ChatRequest, ChatResponse, Message


def _message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name:
        out["name"] = message.name
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        out["tool_calls"] = [[c.id, c.name, c.arguments] for c in message.tool_calls]
    return out


def canonical(request: ChatRequest, max_tokens: int | None = None) -> bytes:
    """The canonical bytes of a request (``max_tokens`` resolved by the caller when given)."""
    body = {
        "model": request.model,
        "messages": [_message(m) for m in request.messages],
        "tools": [{"name": t.name, "description": t.description, "parameters": t.parameters}
                  for t in request.tools],
        "response_schema": request.response_schema,
        "json_mode": request.json_mode,
        "temperature": request.temperature,
        "max_tokens": request.max_tokens if max_tokens is None else max_tokens,
        "stop": list(request.stop),
        "seed": request.seed,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256(data: bytes) -> str:
    """Hex SHA-256."""
    return hashlib.sha256(data).hexdigest()


def request_hash(request: ChatRequest, max_tokens: int | None = None) -> str:
    """The cache key and the receipt's request hash."""
    return sha256(canonical(request, max_tokens))


def prompt_hash(request: ChatRequest) -> str:
    """A hash of the messages alone (the receipt's prompt hash)."""
    return sha256(json.dumps([_message(m) for m in request.messages], sort_keys=True, separators=(",", ":"),
                             ensure_ascii=False).encode())


def output_hash(response: ChatResponse) -> str:
    """A hash of what the model produced: text and tool calls."""
    body = {"content": response.content, "tool_calls": [[c.id, c.name, c.arguments] for c in response.tool_calls]}
    return sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())


def cacheable(request: ChatRequest, allow_sampled: bool) -> bool:
    """Whether a request's answer may be cached: temperature 0 (or unset means the provider's default: no)."""
    return allow_sampled or request.temperature == 0.0


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """At most ``max_entries`` answers, each kept ``ttl_s`` seconds unless the call asks for another TTL."""

    max_entries: int = 1024
    ttl_s: float = 300.0


class ResponseCache:
    """Answers by request hash, expiring after their TTL, least recently used evicted first."""

    def __init__(self, config: CacheConfig | None = None) -> None:
        self.config = config or CacheConfig()
        self._entries: OrderedDict[str, tuple[float, ChatResponse]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str, now: float) -> ChatResponse | None:
        """The cached answer, or None (expired entries are dropped)."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: str, response: ChatResponse, now: float, ttl_s: float | None = None) -> None:
        """Keep an answer until now + TTL."""
        ttl = self.config.ttl_s if ttl_s is None or ttl_s <= 0 else ttl_s
        self._entries[key] = (now + ttl, response)
        self._entries.move_to_end(key)
        while len(self._entries) > self.config.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
