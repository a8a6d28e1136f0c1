"""Client for ModelService: chat models through agentd, with its breakers, retries, fallbacks and budgets.

``ModelClient`` is async; ``SyncModelClient`` is the same API, blocking::

    async with ModelClient("127.0.0.1:7300") as models:
        reply = await models.complete("chat", "What is 2 + 2?", max_tokens=50)
        print(reply.content, reply.receipt.cost_nusd)
        async for event in models.stream("chat", [{"role": "user", "content": "Tell me a story"}]):
            if event.WhichOneof("event") == "text":
                print(event.text, end="")

Messages are a string (one user message) or a list of dicts with ``role``,
``content`` and optionally ``name``, ``tool_call_id``, ``tool_calls``. Errors
raise the :mod:`mabeam_client.errors` tree with the server's ``reason``:
``ResourceExhausted`` (``BUDGET_EXHAUSTED``, ``RATE_LIMITED``, ``BULKHEAD_FULL``),
``Unavailable`` (``CIRCUIT_OPEN`` with ``retry_after``, ``PROVIDER_UNAVAILABLE``,
``MALFORMED_RESPONSE``, ``STREAM_CUT``), ``InvalidArgument`` (``PROVIDER_REJECTED``
with the provider's message, ``INVALID_FIELD``), ``DeadlineExceeded``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from mabeam.v1 import model_pb2, model_pb2_grpc
from mabeam_client.errors import translate
from mabeam_client.security import ClientSecurity, open_channel
from mabeam_client.sync import SyncFace


def _messages(messages: str | Sequence[dict[str, Any]]) -> list[model_pb2.ChatMessage]:
    if isinstance(messages, str):
        return [model_pb2.ChatMessage(role="user", content=messages)]
    out = []
    for m in messages:
        calls = [model_pb2.ToolCall(id=c.get("id", ""), name=c.get("name", ""), arguments=c.get("arguments", ""))
                 for c in m.get("tool_calls", ())]
        out.append(model_pb2.ChatMessage(role=m.get("role", "user"), content=m.get("content") or "",
                                         name=m.get("name", ""), tool_call_id=m.get("tool_call_id", ""),
                                         tool_calls=calls))
    return out


def build_request(model: str, messages: str | Sequence[dict[str, Any]], *, system: str = "",
                  tools: Sequence[dict[str, Any]] = (), response_schema: dict[str, Any] | None = None,
                  json_mode: bool = False, temperature: float | None = None, max_tokens: int = 0,
                  stop: Sequence[str] = (), seed: int | None = None, metadata: dict[str, str] | None = None,
                  tenant: str = "", run_id: str = "", cache: bool = False, cache_ttl: float = 0.0,
                  cache_sampled: bool = False, timeout: float = 0.0) -> model_pb2.CompleteRequest:
    """A CompleteRequest from Python values (tools: ``{"name", "description", "parameters"}``)."""
    chat = _messages(messages)
    if system:
        chat.insert(0, model_pb2.ChatMessage(role="system", content=system))
    request = model_pb2.CompleteRequest(
        model=model, messages=chat,
        tools=[model_pb2.ToolSpec(name=t["name"], description=t.get("description", ""),
                                  parameters_json=json.dumps(t.get("parameters", {}))) for t in tools],
        response_schema_json=json.dumps(response_schema) if response_schema is not None else "",
        json_mode=json_mode, max_tokens=max_tokens, stop=list(stop), metadata=metadata or {}, tenant=tenant,
        run_id=run_id, cache=cache, cache_ttl_seconds=cache_ttl, cache_sampled=cache_sampled,
        timeout_seconds=timeout)
    if temperature is not None:
        request.temperature = temperature
    if seed is not None:
        request.seed = seed
    return request


class ModelClient:
    """Async ModelService client on one gRPC channel to one agentd (``host:port``)."""

    def __init__(self, endpoint: str, timeout: float = 300.0, security: ClientSecurity | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._channel = open_channel(endpoint, security)
        self._stub = model_pb2_grpc.ModelServiceStub(self._channel)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def __aenter__(self) -> ModelClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def list_models(self) -> model_pb2.ListModelsResponse:
        """The configured models (with prices and breaker states) and routes."""
        try:
            listing: model_pb2.ListModelsResponse = await self._stub.ListModels(model_pb2.ListModelsRequest(),
                                                                                timeout=self.timeout)
            return listing
        except grpc.RpcError as error:
            raise translate(error) from None

    async def complete(self, model: str, messages: str | Sequence[dict[str, Any]],
                       **options: Any) -> model_pb2.CompleteResponse:
        """One completion (options: see :func:`build_request`); the response carries its receipt."""
        request = build_request(model, messages, **options)
        try:
            response: model_pb2.CompleteResponse = await self._stub.Complete(request, timeout=self.timeout)
            return response
        except grpc.RpcError as error:
            raise translate(error) from None

    async def stream(self, model: str, messages: str | Sequence[dict[str, Any]],
                     **options: Any) -> AsyncIterator[model_pb2.CompleteEvent]:
        """Events: ``text`` / ``tool_call`` deltas, then ``done``; a cut stream yields ``failed``, then raises."""
        request = build_request(model, messages, **options)
        call = self._stub.StreamComplete(request, timeout=self.timeout)
        try:
            async for event in call:
                yield event
        except grpc.RpcError as error:
            raise translate(error) from None
        finally:
            call.cancel()


class SyncModelClient(SyncFace):
    """The same API as :class:`ModelClient`, blocking."""

    def __init__(self, endpoint: str, timeout: float = 300.0, security: ClientSecurity | None = None) -> None:
        super().__init__(lambda: ModelClient(endpoint, timeout, security))
