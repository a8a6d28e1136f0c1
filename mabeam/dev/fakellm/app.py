"""The fake LLM server's HTTP face (Starlette): OpenAI Chat Completions, Anthropic Messages, controls.

Routes:

- ``POST /v1/chat/completions`` — OpenAI-compatible, JSON or SSE (``stream``,
  ``stream_options.include_usage``), tools, ``response_format`` (JSON mode and
  JSON Schema), ``max_tokens``/``max_completion_tokens``, ``stop``;
- ``POST /v1/messages`` — Anthropic-style Messages, JSON or SSE;
- ``GET /v1/models`` — the models this server knows;
- ``GET /_fake/stats`` — requests served (total, per model, per path, per prompt, in flight,
  the most in flight at once), so tests can prove how many calls really happened;
- ``POST /_fake/reset`` — zero the counters and load a script (the JSON body,
  see :mod:`mabeam.dev.fakellm.script`; empty keeps the current one).

With ``api_key`` set, requests must carry it (``Authorization: Bearer`` or
``x-api-key``) or get 401.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mabeam.dev.fakellm.script import MESSAGE_OVERHEAD, Answer, Fault, Script, count_tokens, pieces, truncate

MAX_BODY = 8 * 1024 * 1024
DEFAULT_MODELS = ["fake-small", "fake-large"]


class DroppedConnection(Exception):
    """Raised inside a streaming body to cut the connection mid-way (the fault ``drop_after``)."""


class State:
    """The server's script and counters (one event loop owns them)."""

    def __init__(self, script: Script, api_key: str = "") -> None:
        self.script = script
        self.api_key = api_key
        self.reset_counters()

    def reset_counters(self) -> None:
        """Zero every counter."""
        self.total = 0
        self.by_model: Counter[str] = Counter()
        self.by_path: Counter[str] = Counter()
        self.by_outcome: Counter[str] = Counter()
        #: Requests by their last user message (first 200 characters): which prompts really reached a model.
        self.by_prompt: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0

    def stats(self) -> dict[str, Any]:
        """The counters as JSON."""
        return {"requests": self.total, "by_model": dict(self.by_model), "by_path": dict(self.by_path),
                "by_outcome": dict(self.by_outcome), "by_prompt": dict(self.by_prompt), "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight}


def _error(status: int, message: str, kind: str, anthropic: bool, retry_after: str = "") -> Response:
    headers = {"retry-after": retry_after} if retry_after else {}
    if anthropic:
        body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)


def _error_kind(status: int, anthropic: bool) -> str:
    if status == 429:
        return "rate_limit_error" if anthropic else "rate_limit_exceeded"
    if status in (401, 403):
        return "authentication_error" if anthropic else "invalid_api_key"
    if status < 500:
        return "invalid_request_error"
    return "overloaded_error" if anthropic else "server_error"


def _text_of(content: Any) -> str:
    """Text of an OpenAI/Anthropic content field: a string, or a list of blocks with ``text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict):
                if isinstance(block.get("text"), str):
                    parts.append(block["text"])
                elif isinstance(block.get("content"), str | list):
                    parts.append(_text_of(block["content"]))
                elif "input" in block:
                    parts.append(json.dumps(block["input"]))
        return " ".join(parts)
    return ""


def _apply_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class FakeLLM:
    """The Starlette app and its state."""

    def __init__(self, script: Script | None = None, api_key: str = "") -> None:
        self.state = State(script or Script(), api_key)
        self.app = Starlette(routes=[
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/messages", self.messages, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/_fake/stats", self.stats, methods=["GET"]),
            Route("/_fake/reset", self.reset, methods=["POST"]),
        ])

    # --- controls ---

    async def stats(self, request: Request) -> Response:
        """The request counters."""
        return JSONResponse(self.state.stats())

    async def reset(self, request: Request) -> Response:
        """Zero the counters; a JSON body replaces the script."""
        raw = await request.body()
        if raw.strip():
            try:
                self.state.script = Script.from_dict(json.loads(raw))
            except (ValueError, TypeError, AttributeError) as error:
                return JSONResponse({"error": {"message": f"bad script: {error}"}}, status_code=400)
        self.state.reset_counters()
        return JSONResponse({"ok": True})

    async def models(self, request: Request) -> Response:
        """``GET /v1/models`` in OpenAI's shape."""
        names = sorted(set(DEFAULT_MODELS) | set(self.state.script.model_names))
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "fakellm"} for name in names]})

    # --- shared request handling ---

    async def _body(self, request: Request, anthropic: bool) -> dict[str, Any] | Response:
        if self.state.api_key:
            given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix(
                "Bearer ")
            if given != self.state.api_key:
                return _error(401, "invalid api key", _error_kind(401, anthropic), anthropic)
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return _error(413, "request too large", "invalid_request_error", anthropic)
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as error:
            return _error(400, f"body is not JSON: {error}", "invalid_request_error", anthropic)
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not isinstance(
                body.get("messages"), list):
            return _error(400, "model (string) and messages (list) are required", "invalid_request_error",
                          anthropic)
        return body

    def _count(self, path: str, model: str) -> None:
        state = self.state
        state.total += 1
        state.by_model[model] += 1
        state.by_path[path] += 1

    async def _serve(self, request: Request, anthropic: bool) -> Response:
        body = await self._body(request, anthropic)
        if isinstance(body, Response):
            self.state.by_outcome[f"http_{body.status_code}"] += 1
            return body
        model = body["model"]
        path = request.url.path
        self._count(path, model)
        messages = body["messages"]
        prompt = next((_text_of(m.get("content")) for m in reversed(messages)
                       if isinstance(m, dict) and m.get("role") == "user"), "")
        self.state.by_prompt[prompt[:200]] += 1
        fmt = body.get("response_format") or {}
        json_mode = isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")
        header = request.headers.get("x-fake-fault")
        try:
            header_fault = Fault.from_header(header) if header else None
            decision = self.state.script.decide(model, prompt, json_mode, header_fault)
        except ValueError as error:
            return _error(400, f"bad x-fake-fault: {error}", "invalid_request_error", anthropic)
        fault = decision.fault or Fault()
        self.state.in_flight += 1
        self.state.max_in_flight = max(self.state.max_in_flight, self.state.in_flight)
        streaming = bool(body.get("stream"))
        handed_over = False  # the response builders below take over the in-flight count
        try:
            if fault.latency_ms:
                await asyncio.sleep(fault.latency_ms / 1000)
            if fault.hang:
                self.state.by_outcome["hang"] += 1
                await asyncio.sleep(fault.hang_s)
                return _error(504, "hung on purpose", "server_error", anthropic)
            if fault.status >= 400:
                self.state.by_outcome[f"http_{fault.status}"] += 1
                return _error(fault.status, fault.message or f"injected {fault.status}",
                              _error_kind(fault.status, anthropic), anthropic, fault.retry_after)
            if fault.malformed:
                self.state.by_outcome["malformed"] += 1
                if streaming:
                    handed_over = True
                    return StreamingResponse(self._chunks(["data: {not json\n\n"], fault),
                                             media_type="text/event-stream")
                return Response(b'{"id": "x", "choices": [', media_type="application/json")
            handed_over = True
        finally:
            if not handed_over:
                self.state.in_flight -= 1
        self.state.by_outcome["ok"] += 1
        input_tokens = sum(count_tokens(_text_of(m.get("content"))) + MESSAGE_OVERHEAD
                           for m in messages if isinstance(m, dict))
        if anthropic and isinstance(body.get("system"), str | list):
            input_tokens += count_tokens(_text_of(body["system"])) + MESSAGE_OVERHEAD
        limit = int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)
        stop = body.get("stop") if not anthropic else body.get("stop_sequences")
        stop_list = [stop] if isinstance(stop, str) else [s for s in (stop or []) if isinstance(s, str)]
        answer = decision.answer
        text, stopped = _apply_stop(answer.text, stop_list)
        text, cut = truncate(text, limit)
        tool_calls = answer.tool_calls if not cut else ()
        output_tokens = count_tokens(text) + sum(count_tokens(c[2]) + 2 for c in tool_calls)
        finish = "length" if cut else "tool_calls" if tool_calls else "stop"
        reply = Answer(text, tool_calls)
        serial = uuid.uuid4().hex[:12]
        if anthropic:
            return self._anthropic(body, model, reply, finish, stopped, input_tokens, output_tokens, serial,
                                   streaming, fault)
        return self._openai(body, model, reply, finish, input_tokens, output_tokens, serial, streaming, fault)

    async def _chunks(self, chunks: list[str], fault: Fault) -> AsyncIterator[bytes]:
        try:
            for index, chunk in enumerate(chunks):
                if fault.drop_after >= 0 and index >= fault.drop_after:
                    self.state.by_outcome["dropped"] += 1
                    raise DroppedConnection("connection dropped on purpose")
                if fault.chunk_delay_ms and index:
                    await asyncio.sleep(fault.chunk_delay_ms / 1000)
                yield chunk.encode()
        finally:
            self.state.in_flight -= 1

    # --- OpenAI ---

    def _openai(self, body: dict[str, Any], model: str, reply: Answer, finish: str, input_tokens: int,
                output_tokens: int, serial: str, streaming: bool, fault: Fault) -> Response:
        created = int(time.time())
        usage = {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                 "total_tokens": input_tokens + output_tokens}
        calls = [{"id": c[0], "type": "function", "function": {"name": c[1], "arguments": c[2]}}
                 for c in reply.tool_calls]
        ident = f"chatcmpl-{serial}"
        if not streaming:
            message: dict[str, Any] = {"role": "assistant", "content": reply.text if reply.text or not calls else None}
            if calls:
                message["tool_calls"] = calls
            doc = {"id": ident, "object": "chat.completion", "created": created, "model": model,
                   "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                   "usage": usage}
            data = json.dumps(doc)
            if fault.drop_after >= 0:
                half = len(data) // 2
                return StreamingResponse(self._chunks([data[:half], data[half:]], Fault(drop_after=1)),
                                         media_type="application/json")
            self.state.in_flight -= 1
            return Response(data, media_type="application/json")

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
            doc = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
            return f"data: {json.dumps(doc)}\n\n"

        chunks = [chunk({"role": "assistant", "content": ""})]
        chunks += [chunk({"content": piece}) for piece in pieces(reply.text)]
        for index, call in enumerate(calls):
            chunks.append(chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                                 "function": {"name": call["function"]["name"], "arguments": ""}}]}))
            for piece in pieces(call["function"]["arguments"]):
                chunks.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
        chunks.append(chunk({}, finish))
        options = body.get("stream_options") or {}
        if isinstance(options, dict) and options.get("include_usage"):
            chunks.append("data: " + json.dumps({"id": ident, "object": "chat.completion.chunk", "created": created,
                                                 "model": model, "choices": [], "usage": usage}) + "\n\n")
        chunks.append("data: [DONE]\n\n")
        return StreamingResponse(self._chunks(chunks, fault), media_type="text/event-stream")

    async def chat(self, request: Request) -> Response:
        """``POST /v1/chat/completions``."""
        return await self._serve(request, anthropic=False)

    # --- Anthropic ---

    def _anthropic(self, body: dict[str, Any], model: str, reply: Answer, finish: str, stopped: bool,
                   input_tokens: int, output_tokens: int, serial: str, streaming: bool,
                   fault: Fault) -> Response:
        stop_reason = {"length": "max_tokens", "tool_calls": "tool_use"}.get(
            finish, "stop_sequence" if stopped else "end_turn")
        blocks: list[dict[str, Any]] = []
        if reply.text:
            blocks.append({"type": "text", "text": reply.text})
        for call in reply.tool_calls:
            blocks.append({"type": "tool_use", "id": call[0], "name": call[1], "input": json.loads(call[2])})
        ident = f"msg_{serial}"
        if not streaming:
            self.state.in_flight -= 1
            return JSONResponse({"id": ident, "type": "message", "role": "assistant", "model": model,
                                 "content": blocks, "stop_reason": stop_reason, "stop_sequence": None,
                                 "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}})

        def event(name: str, data: dict[str, Any]) -> str:
            return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"

        chunks = [event("message_start", {"message": {
            "id": ident, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": input_tokens, "output_tokens": 1}}})]
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                chunks.append(event("content_block_start", {"index": index,
                                                            "content_block": {"type": "text", "text": ""}}))
                chunks += [event("content_block_delta", {"index": index,
                                                         "delta": {"type": "text_delta", "text": piece}})
                           for piece in pieces(block["text"])]
            else:
                chunks.append(event("content_block_start", {"index": index, "content_block": {
                    "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}))
                chunks += [event("content_block_delta", {"index": index, "delta": {
                    "type": "input_json_delta", "partial_json": piece}})
                    for piece in pieces(json.dumps(block["input"], sort_keys=True))]
            chunks.append(event("content_block_stop", {"index": index}))
        chunks.append(event("message_delta", {"delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                              "usage": {"output_tokens": output_tokens}}))
        chunks.append(event("message_stop", {}))
        return StreamingResponse(self._chunks(chunks, fault), media_type="text/event-stream")

    async def messages(self, request: Request) -> Response:
        """``POST /v1/messages`` (Anthropic)."""
        return await self._serve(request, anthropic=True)
