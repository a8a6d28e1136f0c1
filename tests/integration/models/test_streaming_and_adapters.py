"""Streaming (deltas, usage, cuts before and after the first token) and the Anthropic adapter, over real HTTP."""

from __future__ import annotations

import json

import pytest
from models_helpers import ask, models_config

from agentd.models.router import CallFailed, ModelRouter, Receipt
from agentd.models.types import ErrorKind, Message, StreamEnd, TextDelta, Tool, ToolCallDelta
from mabeam.dev.fakellm.process import FakeLLMProcess


class Recorder:
    """A sink that keeps what it was given."""

    def __init__(self) -> None:
        self.deltas: list[object] = []
        self.receipts: list[Receipt] = []

    async def on_delta(self, call_id: str, delta: TextDelta | ToolCallDelta) -> None:
        self.deltas.append(delta)

    async def on_receipt(self, call_id: str, receipt: Receipt) -> None:
        self.receipts.append(receipt)


async def collect(r: ModelRouter, request, sink=None):  # type: ignore[no-untyped-def]
    events = []
    async for event in r.stream(request, sink=sink):
        events.append(event)
    return events


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_stream_deltas_then_end_and_receipt(fake_llm: FakeLLMProcess, kind: str) -> None:
    fake_llm.reset({"rules": [{"generate": "fixed", "tokens": 12}]})
    r = ModelRouter(models_config(fake_llm, kind=kind))
    sink = Recorder()
    try:
        events = await collect(r, ask("small", max_tokens=8), sink)
    finally:
        await r.close()
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    end = next(e for e in events if isinstance(e, StreamEnd))
    assert len(deltas) == 8 and "".join(deltas) == end.response.content == " ".join(f"tok{i}" for i in range(1, 9))
    assert end.response.finish_reason == "length" and end.response.usage.output_tokens == 8
    assert isinstance(events[-1], Receipt) and events[-1].usage.output_tokens == 8
    assert sink.deltas == [e for e in events if isinstance(e, TextDelta)] and sink.receipts == [events[-1]]


async def test_cut_before_the_first_token_is_retried(fake_llm: FakeLLMProcess) -> None:
    fake_llm.reset({"rules": [{"fault": {"drop_after": 0}, "times": 1}]})
    r = ModelRouter(models_config(fake_llm))
    try:
        events = await collect(r, ask("small"))
    finally:
        await r.close()
    assert events[-1].attempts == 2 and fake_llm.requests_for("fake-small") == 2
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "echo: hello"


async def test_cut_after_tokens_is_not_retried_and_keeps_the_partial_message(fake_llm: FakeLLMProcess) -> None:
    fake_llm.reset({"rules": [{"generate": "fixed", "tokens": 10, "fault": {"drop_after": 4}}]})
    r = ModelRouter(models_config(fake_llm))
    sink = Recorder()
    try:
        with pytest.raises(CallFailed) as failed:
            await collect(r, ask("small"), sink)
    finally:
        await r.close()
    error = failed.value
    assert error.kind == ErrorKind.STREAM_CUT and fake_llm.requests_for("fake-small") == 1
    assert error.partial is not None and error.partial.content == "tok1 tok2 tok3"  # chunk 0 is the role
    assert error.receipt.partial and error.receipt.error_class == "stream_cut" and sink.receipts == [error.receipt]
    assert error.receipt.cost_nusd > 0  # what may have been billed is charged


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_tool_calls_plain_and_streamed(fake_llm: FakeLLMProcess, kind: str) -> None:
    fake_llm.reset({"rules": [{"tool_calls": [{"name": "lookup", "arguments": {"q": "mabeam"}}]}]})
    r = ModelRouter(models_config(fake_llm, kind=kind))
    tool = Tool("lookup", "search", {"type": "object", "properties": {"q": {"type": "string"}}})
    request = ask("small", "find it", tools=(tool,))
    try:
        response, _ = await r.complete(request)
        events = await collect(r, request)
        follow_up = ask("small").messages[0]
        answer, _ = await r.complete(ask("small", "x", tools=(tool,)).__class__(
            "small", (Message("user", "find it"), Message("assistant", tool_calls=response.tool_calls),
                      Message("tool", '{"hits": 3}', tool_call_id=response.tool_calls[0].id), follow_up)))
    finally:
        await r.close()
    assert response.finish_reason == "tool_calls" and response.tool_calls[0].name == "lookup"
    assert json.loads(response.tool_calls[0].arguments) == {"q": "mabeam"}
    end = next(e for e in events if isinstance(e, StreamEnd))
    assert end.response.tool_calls[0].name == "lookup" and json.loads(end.response.tool_calls[0].arguments) == {
        "q": "mabeam"}
    assert any(isinstance(e, ToolCallDelta) for e in events)
    assert answer.tool_calls  # the conversation with a tool result went through the adapter's encoding


async def test_structured_output_and_anthropic_errors(fake_llm: FakeLLMProcess) -> None:
    fake_llm.reset({"rules": [{"model": "fake-small", "fault": {"status": 529}, "times": 1}]})
    r = ModelRouter(models_config(fake_llm, kind="anthropic"))
    try:
        response, receipt = await r.complete(ask("small", "hi", json_mode=True))
    finally:
        await r.close()
    assert receipt.attempts == 2  # 529 (overloaded) is retryable
    assert response.content == "echo: hi"
    r = ModelRouter(models_config(fake_llm))
    try:
        response, _ = await r.complete(ask("small", "hi", response_schema={"type": "object"}))
    finally:
        await r.close()
    assert json.loads(response.content) == {"echo": "hi"}
