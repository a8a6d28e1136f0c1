"""Anthropic Messages (``POST {base_url}/v1/messages``), JSON and SSE.

System messages become the top-level ``system``; tool results become user
``tool_result`` blocks; structured output is asked for with a forced tool named
``output`` whose input is the answer (Messages has no response_format).
"""

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
    ModelError,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)

STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}
OUTPUT_TOOL = "output"


class AnthropicAdapter(Adapter):
    """Messages over httpx; ``x-api-key`` and ``anthropic-version`` headers."""

    def auth_headers(self, key: str) -> dict[str, str]:
        """The key and the API version."""
        headers = {"anthropic-version": self.config.anthropic_version}
        if key:
            headers["x-api-key"] = key
        return headers

    def body(self, request: ChatRequest, model_id: str, max_tokens: int, stream: bool) -> dict[str, Any]:
        """The JSON request body."""
        system: list[str] = []
        messages: list[dict[str, Any]] = []
        for message in request.messages:
            if message.role == "system":
                system.append(message.content)
                continue
            if message.role == "tool":
                block = {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.content}
                messages.append({"role": "user", "content": [block]})
                continue
            blocks: list[dict[str, Any]] = []
            if message.content:
                blocks.append({"type": "text", "text": message.content})
            for call in message.tool_calls:
                try:
                    arguments = json.loads(call.arguments or "{}")
                except json.JSONDecodeError:
                    arguments = {"_raw": call.arguments}
                blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": arguments})
            messages.append({"role": message.role, "content": blocks})
        body: dict[str, Any] = {"model": model_id, "max_tokens": max_tokens, "messages": messages}
        tools = [{"name": t.name, "description": t.description, "input_schema": dict(t.parameters) or
                  {"type": "object"}} for t in request.tools]
        if request.response_schema is not None:
            tools.append({"name": OUTPUT_TOOL, "description": "Give the answer.",
                          "input_schema": dict(request.response_schema)})
            body["tool_choice"] = {"type": "tool", "name": OUTPUT_TOOL}
        elif request.json_mode:
            system.append("Answer with one JSON object and nothing else.")
        if tools:
            body["tools"] = tools
        if system:
            body["system"] = "\n\n".join(system)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        if request.metadata.get("user_id"):
            body["metadata"] = {"user_id": request.metadata["user_id"]}
        if stream:
            body["stream"] = True
        return body

    @staticmethod
    def _finish(calls: list[ToolCall], text: str, stop_reason: str,
                structured: bool) -> tuple[str, tuple[ToolCall, ...], str]:
        if structured:
            for call in calls:
                if call.name == OUTPUT_TOOL:
                    rest = tuple(c for c in calls if c.name != OUTPUT_TOOL)
                    return call.arguments, rest, "stop" if not rest else "tool_calls"
        return text, tuple(calls), STOP_REASONS.get(stop_reason, stop_reason or "stop")

    async def complete(self, request: ChatRequest, model_id: str, max_tokens: int) -> ChatResponse:
        """One non-streamed attempt."""
        started = time.perf_counter()
        data = await self.post_json("/v1/messages", self.body(request, model_id, max_tokens, False), model_id)
        try:
            text, calls = [], []
            for block in data["content"]:
                if block["type"] == "text":
                    text.append(str(block["text"]))
                elif block["type"] == "tool_use":
                    calls.append(ToolCall(str(block["id"]), str(block["name"]),
                                          json.dumps(block["input"], sort_keys=True)))
            usage = data.get("usage") or {}
            content, tool_calls, finish = self._finish(calls, "".join(text), str(data.get("stop_reason") or ""),
                                                       request.response_schema is not None)
            return ChatResponse(content, tool_calls, finish,
                                Usage(int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)),
                                str(data.get("model") or model_id), time.perf_counter() - started)
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            raise self.malformed(f"{type(error).__name__}: {error}", model_id) from None

    async def stream(self, request: ChatRequest, model_id: str, max_tokens: int) -> AsyncIterator[StreamEvent]:
        """One streamed attempt; a stream without ``message_stop`` is a cut."""
        started = time.perf_counter()
        structured = request.response_schema is not None
        text: list[str] = []
        blocks: dict[int, list[str]] = {}  # index -> [id, name, arguments] for tool_use blocks
        output_index = -1
        input_tokens = output_tokens = 0
        stop_reason, model, stopped = "", model_id, False
        async for event in self.post_sse("/v1/messages", self.body(request, model_id, max_tokens, True), model_id):
            try:
                data = json.loads(event.data) if event.data else {}
                kind = data.get("type", event.event)
                if kind == "error":
                    error = data.get("error") or {}
                    raise ModelError(ErrorKind.UNAVAILABLE, f"{self.name}: error in stream: {error.get('message')}",
                                     provider=self.name, model=model_id)
                if kind == "message_start":
                    message = data["message"]
                    model = str(message.get("model") or model)
                    input_tokens = int((message.get("usage") or {}).get("input_tokens") or 0)
                elif kind == "content_block_start":
                    block = data["content_block"]
                    if block["type"] == "tool_use":
                        index = int(data["index"])
                        blocks[index] = [str(block["id"]), str(block["name"]), ""]
                        if structured and block["name"] == OUTPUT_TOOL:
                            output_index = index
                        else:
                            yield ToolCallDelta(index, str(block["id"]), str(block["name"]))
                elif kind == "content_block_delta":
                    delta = data["delta"]
                    index = int(data["index"])
                    if delta["type"] == "text_delta":
                        text.append(str(delta["text"]))
                        yield TextDelta(str(delta["text"]))
                    elif delta["type"] == "input_json_delta":
                        piece = str(delta["partial_json"])
                        blocks[index][2] += piece
                        if index == output_index:
                            yield TextDelta(piece)  # the structured answer streams as text
                        else:
                            yield ToolCallDelta(index, arguments=piece)
                elif kind == "message_delta":
                    stop_reason = str((data.get("delta") or {}).get("stop_reason") or stop_reason)
                    output_tokens = int((data.get("usage") or {}).get("output_tokens") or output_tokens)
                elif kind == "message_stop":
                    stopped = True
                    break
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as error:
                raise self.malformed(f"stream event: {type(error).__name__}: {error}", model_id) from None
        if not stopped:
            raise ModelError(ErrorKind.STREAM_CUT, f"{self.name}: the stream ended before message_stop",
                             provider=self.name, model=model_id)
        calls = [ToolCall(b[0], b[1], b[2]) for _, b in sorted(blocks.items())]
        content, tool_calls, finish = self._finish(calls, "".join(text), stop_reason, structured)
        yield StreamEnd(ChatResponse(content, tool_calls, finish, Usage(input_tokens, output_tokens), model,
                                     time.perf_counter() - started))
