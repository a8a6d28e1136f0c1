"""OpenAI-compatible Chat Completions (``POST {base_url}/chat/completions``): OpenAI, vLLM, llama.cpp, Ollama, LiteLLM."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from agentd.models.adapters.base import Adapter
from agentd.models.types import (
    ChatRequest,
    ChatResponse,
    ErrorKind,
    Message,
    ModelError,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)


def _message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name:
        out["name"] = message.name
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                             for c in message.tool_calls]
        if not message.content:
            out["content"] = None
    return out


def _usage(data: Any) -> Usage:
    if not isinstance(data, dict):
        return Usage()
    return Usage(int(data.get("prompt_tokens") or 0), int(data.get("completion_tokens") or 0))


class OpenAIAdapter(Adapter):
    """Chat Completions over httpx; ``Authorization: Bearer <key>``."""

    def auth_headers(self, key: str) -> dict[str, str]:
        """The bearer token."""
        return {"Authorization": f"Bearer {key}"} if key else {}

    def body(self, request: ChatRequest, model_id: str, max_tokens: int, stream: bool) -> dict[str, Any]:
        """The JSON request body."""
        body: dict[str, Any] = {"model": model_id, "messages": [_message(m) for m in request.messages],
                                self.config.max_tokens_field: max_tokens}
        if request.tools:
            body["tools"] = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                               "parameters": dict(t.parameters)}}
                             for t in request.tools]
        if request.response_schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "output", "schema": dict(request.response_schema), "strict": True}}
        elif request.json_mode:
            body["response_format"] = {"type": "json_object"}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop"] = list(request.stop)
        if request.seed is not None:
            body["seed"] = request.seed
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    async def complete(self, request: ChatRequest, model_id: str, max_tokens: int) -> ChatResponse:
        """One non-streamed attempt."""
        started = time.perf_counter()
        data = await self.post_json("/chat/completions", self.body(request, model_id, max_tokens, False), model_id)
        try:
            choice = data["choices"][0]
            message = choice["message"]
            calls = tuple(ToolCall(str(c["id"]), str(c["function"]["name"]), str(c["function"]["arguments"]))
                          for c in message.get("tool_calls") or ())
            content = message.get("content") or ""
            if not isinstance(content, str):
                raise TypeError("content is not text")
            return ChatResponse(content, calls, str(choice.get("finish_reason") or "stop"), _usage(data.get("usage")),
                                str(data.get("model") or model_id), time.perf_counter() - started)
        except (KeyError, IndexError, TypeError, AttributeError) as error:
            raise self.malformed(f"{type(error).__name__}: {error}", model_id) from None

    async def stream(self, request: ChatRequest, model_id: str, max_tokens: int) -> AsyncIterator[StreamEvent]:
        """One streamed attempt; a stream that ends without a finish reason or ``[DONE]`` is a cut."""
        started = time.perf_counter()
        text: list[str] = []
        calls: dict[int, list[str]] = {}
        finish, usage, model, done = "", Usage(), model_id, False
        async for event in self.post_sse("/chat/completions", self.body(request, model_id, max_tokens, True),
                                         model_id):
            if event.data == "[DONE]":
                done = True
                break
            try:
                data = json.loads(event.data)
                if data.get("usage"):
                    usage = _usage(data["usage"])
                model = str(data.get("model") or model)
                for choice in data.get("choices") or ():
                    delta = choice.get("delta") or {}
                    piece = delta.get("content")
                    if piece:
                        text.append(piece)
                        yield TextDelta(piece)
                    for call in delta.get("tool_calls") or ():
                        index = int(call.get("index", 0))
                        function = call.get("function") or {}
                        slot = calls.setdefault(index, ["", "", ""])
                        out = ToolCallDelta(index, str(call.get("id") or ""), str(function.get("name") or ""),
                                            str(function.get("arguments") or ""))
                        slot[0] = slot[0] or out.id
                        slot[1] = slot[1] or out.name
                        slot[2] += out.arguments
                        yield out
                    if choice.get("finish_reason"):
                        finish = str(choice["finish_reason"])
            except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as error:
                raise self.malformed(f"stream chunk: {type(error).__name__}: {error}", model_id) from None
        if not done and not finish:
            raise ModelError(ErrorKind.STREAM_CUT, f"{self.name}: the stream ended before it finished",
                             provider=self.name, model=model_id)
        response = ChatResponse("".join(text), tuple(ToolCall(c[0], c[1], c[2]) for _, c in sorted(calls.items())),
                                finish or "stop", usage, model, time.perf_counter() - started)
        yield StreamEnd(response)
