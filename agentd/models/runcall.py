"""One model call on behalf of a run, with JSON in and out: what a run executor's ``model`` op calls.

An agent inside a run asks for a model call from its worker; the executor (the
main process, holding the run's lease and the router) runs it with
:func:`run_model_call`: the request arrives as JSON (validated here), the
deltas and the receipt go into the run's log through its fenced append
(:class:`~agentd.models.runsink.RunLogSink`), the run's and the tenant's budgets
apply, and the answer goes back as JSON. The executor records that answer as the
run's step, so a replay after a crash returns it without calling the model again.
"""

from __future__ import annotations

from typing import Any

from agentd.models.router import CallOptions, ModelRouter, Receipt
from agentd.models.runsink import Append, RunLogSink
from agentd.models.types import (
    ChatRequest,
    ChatResponse,
    ErrorKind,
    Message,
    ModelError,
    StreamEnd,
    Tool,
    ToolCall,
)

ROLES = frozenset({"system", "user", "assistant", "tool"})


def _invalid(message: str) -> ModelError:
    return ModelError(ErrorKind.INVALID, message)


def request_from_json(data: Any) -> tuple[ChatRequest, bool]:
    """A ChatRequest from ``{"model", "messages": [{"role", "content", ...}], "tools", "response_schema",
    "json_mode", "temperature", "max_tokens", "stop", "seed", "metadata", "cache"}``; INVALID naming the field."""
    if not isinstance(data, dict):
        raise _invalid("request: must be an object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model: a model or route name is required")
    raw_messages = data.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise _invalid("messages: a non-empty list is required")
    messages = []
    for i, m in enumerate(raw_messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content", ""), str):
            raise _invalid(f"messages[{i}]: needs a role ({', '.join(sorted(ROLES))}) and text content")
        calls = tuple(ToolCall(str(c.get("id", "")), str(c.get("name", "")), str(c.get("arguments", "")))
                      for c in m.get("tool_calls", ()) if isinstance(c, dict))
        messages.append(Message(m["role"], m.get("content", ""), str(m.get("name", "")),
                                str(m.get("tool_call_id", "")), calls))
    tools = []
    for i, t in enumerate(data.get("tools", ())):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not isinstance(t.get("parameters", {}), dict):
            raise _invalid(f"tools[{i}]: needs a name and a JSON Schema object as parameters")
        tools.append(Tool(t["name"], str(t.get("description", "")), t.get("parameters", {})))
    schema = data.get("response_schema")
    if schema is not None and not isinstance(schema, dict):
        raise _invalid("response_schema: must be a JSON Schema object")
    temperature = data.get("temperature")
    if temperature is not None and (not isinstance(temperature, int | float) or not 0 <= temperature <= 2):
        raise _invalid("temperature: must be between 0 and 2")
    max_tokens = data.get("max_tokens", 0)
    if not isinstance(max_tokens, int) or max_tokens < 0:
        raise _invalid("max_tokens: must be a non-negative integer")
    stop = data.get("stop", ())
    if not isinstance(stop, list | tuple) or not all(isinstance(s, str) for s in stop):
        raise _invalid("stop: must be a list of strings")
    seed = data.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise _invalid("seed: must be an integer")
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise _invalid("metadata: must be an object of strings")
    request = ChatRequest(model, tuple(messages), tuple(tools), schema, bool(data.get("json_mode", False)),
                          None if temperature is None else float(temperature), max_tokens, tuple(stop), seed,
                          {str(k): str(v) for k, v in metadata.items()})
    return request, bool(data.get("cache", False))


def response_to_json(response: ChatResponse, receipt: Receipt) -> dict[str, Any]:
    """The answer as the agent gets it (and the step records it)."""
    return {"content": response.content, "finish_reason": response.finish_reason, "model": response.model,
            "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in response.tool_calls],
            "usage": {"input_tokens": response.usage.input_tokens, "output_tokens": response.usage.output_tokens},
            "call_id": receipt.call_id, "cost_nusd": receipt.cost_nusd}


async def run_model_call(router: ModelRouter, append: Append, run_id: str, tenant: str, data: Any) -> dict[str, Any]:
    """Validate, stream into the run's log, and answer; CallFailed (with receipt and partial answer) on failure."""
    request, cache = request_from_json(data)
    options = CallOptions(tenant=tenant or "default", run_id=run_id, cache=cache)
    response: ChatResponse | None = None
    receipt: Receipt | None = None
    async for event in router.stream(request, options, sink=RunLogSink(append)):
        if isinstance(event, StreamEnd):
            response = event.response
        elif isinstance(event, Receipt):
            receipt = event
    assert response is not None and receipt is not None, "stream() ends with both or raises"
    return response_to_json(response, receipt)
