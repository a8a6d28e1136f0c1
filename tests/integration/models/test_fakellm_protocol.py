"""The fake LLM server speaks the real protocols: checked with the official OpenAI client and raw HTTP."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from mabeam.dev.fakellm.process import FakeLLMProcess


def client(server: FakeLLMProcess, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base, api_key="unused", max_retries=0, **kw)  # type: ignore[arg-type]


def test_models_and_plain_completion_with_usage(fake_llm: FakeLLMProcess) -> None:
    oa = client(fake_llm)
    assert {"fake-small", "fake-large"} <= {m.id for m in oa.models.list()}
    reply = oa.chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "hello there"}])
    assert reply.choices[0].message.content == "echo: hello there"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.prompt_tokens == 2 + 3 and reply.usage.completion_tokens == 4
    assert fake_llm.requests_for("fake-small") == 1


def test_streaming_with_usage_and_max_tokens(fake_llm: FakeLLMProcess) -> None:
    fake_llm.reset({"rules": [{"generate": "fixed", "tokens": 20}]})
    stream = client(fake_llm).chat.completions.create(
        model="fake-small", messages=[{"role": "user", "content": "go"}], stream=True, max_tokens=5,
        stream_options={"include_usage": True})
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == "tok1 tok2 tok3 tok4 tok5" and finish == "length"
    assert usage is not None and usage.completion_tokens == 5


def test_tool_calls_and_json_mode(fake_llm: FakeLLMProcess) -> None:
    fake_llm.reset({"rules": [{"match": "weather", "tool_calls": [{"name": "get_weather",
                                                                   "arguments": {"city": "Oslo"}}]}]})
    oa = client(fake_llm)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    reply = oa.chat.completions.create(model="m", messages=[{"role": "user", "content": "weather in Oslo?"}],
                                       tools=tools)  # type: ignore[arg-type]
    call = reply.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}
    streamed = oa.chat.completions.create(model="m", messages=[{"role": "user", "content": "weather?"}],
                                          tools=tools, stream=True)  # type: ignore[arg-type]
    arguments = "".join(c.choices[0].delta.tool_calls[0].function.arguments or ""  # type: ignore[index,union-attr]
                        for c in streamed if c.choices and c.choices[0].delta.tool_calls)
    assert json.loads(arguments) == {"city": "Oslo"}
    as_json = oa.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                         response_format={"type": "json_object"})
    assert json.loads(as_json.choices[0].message.content or "") == {"echo": "x"}


def test_faults_by_header_script_step_and_model(fake_llm: FakeLLMProcess) -> None:
    fake_llm.reset({"rules": [{"model": "steps", "fault": {"status": 503}, "times": 1}],
                    "models": {"limited": {"fault": {"status": 429, "retry_after": "2"}}}})
    oa = client(fake_llm)
    with pytest.raises(openai.RateLimitError) as limited:
        oa.chat.completions.create(model="limited", messages=[{"role": "user", "content": "x"}])
    assert limited.value.response.headers["retry-after"] == "2"
    with pytest.raises(openai.InternalServerError):
        oa.chat.completions.create(model="steps", messages=[{"role": "user", "content": "x"}])
    assert oa.chat.completions.create(model="steps", messages=[{"role": "user", "content": "x"}]).choices
    with pytest.raises(openai.BadRequestError):
        oa.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                   extra_headers={"x-fake-fault": "status=400"})
    with pytest.raises(openai.APITimeoutError):
        client(fake_llm, timeout=0.5).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], extra_headers={"x-fake-fault": "hang,hang_s=5"})
    raw = httpx.post(f"{fake_llm.url}/v1/chat/completions", headers={"x-fake-fault": "malformed"},
                     json={"model": "m", "messages": []})
    with pytest.raises(json.JSONDecodeError):
        raw.json()
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", f"{fake_llm.url}/v1/chat/completions", headers={"x-fake-fault": "drop_after=2"},
                          json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "a b c"}]}) as r:
            for _ in r.iter_bytes():
                pass
    stats = fake_llm.stats()
    assert stats["by_model"] == {"limited": 1, "steps": 2, "m": 4}
    assert stats["by_outcome"]["dropped"] == 1 and stats["in_flight"] in (0, 1)  # the hang may still sleep


def test_anthropic_messages_plain_and_streamed(fake_llm: FakeLLMProcess) -> None:
    body = {"model": "claude-fake", "max_tokens": 50, "system": "be brief",
            "messages": [{"role": "user", "content": "hi you"}]}
    reply = httpx.post(f"{fake_llm.url}/v1/messages", json=body).json()
    assert reply["content"] == [{"type": "text", "text": "echo: hi you"}] and reply["stop_reason"] == "end_turn"
    assert reply["usage"] == {"input_tokens": 2 + 3 + 2 + 3, "output_tokens": 4}
    events = []
    with httpx.stream("POST", f"{fake_llm.url}/v1/messages", json={**body, "stream": True}) as response:
        for line in response.iter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
    assert events[0] == "message_start" and events[-1] == "message_stop" and "content_block_delta" in events


def test_api_key_required_when_configured() -> None:
    with FakeLLMProcess(api_key="sekrit") as server:
        with pytest.raises(openai.AuthenticationError):
            client(server).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        ok = openai.OpenAI(base_url=server.openai_base, api_key="sekrit", max_retries=0)
        assert ok.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}]).choices
