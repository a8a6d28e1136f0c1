"""Model calls streamed into a run's event log on the real runs store (SQLite and PostgreSQL):
deltas as events in order, resume mid-message from a seq, the receipt event, a cut stream's partial message."""

from __future__ import annotations

import time

import pytest
from models_helpers import ask, models_config

from agentd.models.router import CallFailed, CallOptions, ModelRouter
from agentd.models.runsink import DELTA, RECEIPT, RunLogSink, message_from_events
from agentd.models.types import StreamEnd
from agentd.runs.model import RunSpec, canonical_json
from agentd.runs.store import open_store
from mabeam.dev.fakellm.process import FakeLLMProcess

TOKEN = 7


@pytest.fixture
async def run_log(runs_store_url):  # type: ignore[no-untyped-def]
    store = open_store(runs_store_url)
    await store.open()
    await store.start(RunSpec("run-m", "default", "writer", "enqueue", {}, canonical_json({"task": "poem"})),
                      int(time.time() * 1000))
    claimed = await store.claim("run-m", TOKEN, "node-1", 1, int(time.time() * 1000), 3)
    yield store, claimed.row.last_seq
    await store.close()


def sink_for(store) -> RunLogSink:  # type: ignore[no-untyped-def]
    return RunLogSink(lambda events: store.append("run-m", TOKEN, events, int(time.time() * 1000)))


async def test_deltas_stream_into_the_log_and_a_reader_resumes_mid_message(fake_llm: FakeLLMProcess,
                                                                          run_log) -> None:  # type: ignore[no-untyped-def]
    store, start = run_log
    fake_llm.reset({"rules": [{"generate": "fixed", "tokens": 12}]})
    router = ModelRouter(models_config(fake_llm))
    try:
        events = [e async for e in router.stream(ask("small", max_tokens=12), CallOptions(run_id="run-m"),
                                                 sink=sink_for(store))]
    finally:
        await router.close()
    answer = next(e for e in events if isinstance(e, StreamEnd)).response.content
    _, logged = await store.read("run-m", start)
    assert [e.type for e in logged] == [DELTA] * 12 + [RECEIPT]
    payloads = [e.payload_value() for e in logged]
    call_id = payloads[-1]["call_id"]
    assert message_from_events(payloads, call_id) == answer
    assert [p["index"] for p in payloads[:-1]] == list(range(12))
    # A reader that saw up to the fifth delta resumes from its seq and gets exactly the rest.
    _, rest = await store.read("run-m", logged[4].seq)
    assert message_from_events([e.payload_value() for e in rest], call_id) == answer[len(
        message_from_events(payloads[:5], call_id)):]
    receipt = payloads[-1]
    for field in ("provider", "model", "route", "path", "attempts", "cache_hit", "request_hash", "prompt_hash",
                  "output_hash", "usage", "cost_nusd", "latency_s", "error_class"):
        assert field in receipt, field
    assert receipt["run_id"] == "run-m" and receipt["deltas"] == 12 and receipt["usage"]["output_tokens"] == 12
    assert receipt["error_class"] == "" and receipt["path"] == ["small:ok"]


async def test_a_cut_stream_leaves_the_partial_message_and_the_error(fake_llm: FakeLLMProcess,
                                                                    run_log) -> None:  # type: ignore[no-untyped-def]
    store, start = run_log
    fake_llm.reset({"rules": [{"generate": "fixed", "tokens": 10, "fault": {"drop_after": 5}}]})
    router = ModelRouter(models_config(fake_llm))
    try:
        with pytest.raises(CallFailed) as failed:
            async for _ in router.stream(ask("small"), CallOptions(run_id="run-m"), sink=sink_for(store)):
                pass
    finally:
        await router.close()
    _, logged = await store.read("run-m", start)
    payloads = [e.payload_value() for e in logged]
    assert [e.type for e in logged] == [DELTA] * 4 + [RECEIPT]
    assert message_from_events(payloads, payloads[-1]["call_id"]) == "tok1 tok2 tok3 tok4"
    assert failed.value.partial is not None and failed.value.partial.content == "tok1 tok2 tok3 tok4"
    assert payloads[-1]["partial"] is True and payloads[-1]["error_class"] == "stream_cut"


async def test_run_model_call_from_json_records_and_answers(fake_llm: FakeLLMProcess,
                                                           run_log) -> None:  # type: ignore[no-untyped-def]
    from agentd.models.runcall import run_model_call
    from agentd.models.types import ErrorKind, ModelError

    store, start = run_log
    router = ModelRouter(models_config(fake_llm, budgets={"per_run": {"tokens": 60}}))
    append = sink_for(store).append
    try:
        answer = await run_model_call(router, append, "run-m", "default",
                                      {"model": "small", "messages": [{"role": "user", "content": "hi there"}],
                                       "max_tokens": 10})
        assert answer["content"] == "echo: hi there" and answer["usage"]["output_tokens"] == 4
        with pytest.raises(ModelError) as bad:
            await run_model_call(router, append, "run-m", "default", {"model": "small", "messages": []})
        assert bad.value.kind == ErrorKind.INVALID and "messages" in bad.value.message
        with pytest.raises(CallFailed) as poor:  # the run's budget: 60 tokens, 16 spent, worst case 8+4+8+50
            await run_model_call(router, append, "run-m", "default",
                                 {"model": "small", "messages": [{"role": "user", "content": "again"}],
                                  "max_tokens": 50})
        assert poor.value.kind == ErrorKind.BUDGET_EXHAUSTED
    finally:
        await router.close()
    _, logged = await store.read("run-m", start)
    kinds = [e.type for e in logged]
    assert kinds.count(RECEIPT) == 2 and kinds.count(DELTA) == 3  # "echo:", " hi", " there"; the refused call has a receipt, no deltas
