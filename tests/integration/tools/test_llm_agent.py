"""The LLM agent in durable runs, end to end: real agentd processes, the local model server over HTTP,
tool tasks with policy gates and durable approvals, and kill -9 of the executing agentd.

Counts come from outside the agents: the model server counts the requests that reached it per prompt,
and the example tools append every execution to a ledger file (MABEAM_TOOL_LEDGER).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import Any

import pytest
from tools_helpers import endpoints, events_until, executing_agentd, ledger_calls, payload

from mabeam.dev.testing import wait_until
from mabeam_client.errors import FailedPrecondition, NotFound
from mabeam_client.runs import RunClient


async def test_answer_with_two_tools_in_one_turn(bed: dict[str, Any]) -> None:
    # One model answer asks for two tools; both run as tool tasks; the second model call answers.
    llm, cluster = bed["llm"], bed["cluster"]
    question = f"weather and sum {uuid.uuid4().hex[:6]}"
    llm.reset({"rules": [
        {"match": question, "times": 1, "tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}},
                                                      {"name": "add", "arguments": {"a": 2, "b": 3}}]},
        {"match": question, "reply": "Oslo is mild, and 2 + 3 = 5."}]})
    async with RunClient(endpoints(cluster)) as runs:
        run_id = f"llm-{uuid.uuid4().hex[:8]}"
        await runs.start("helper", question, run_id=run_id)
        events = await events_until(runs, run_id, lambda e: False)
    types = [e.type for e in events]
    assert types[-1] == "run.completed", types
    receipts = {p["tool"]: p for p in map(payload, (e for e in events if e.type == "tool.receipt"))}
    assert receipts["weather"]["state"] == "succeeded" and receipts["add"]["state"] == "succeeded"
    answer = [payload(e) for e in events if e.type == "agent.answer"]
    assert answer and answer[0]["text"] == "Oslo is mild, and 2 + 3 = 5." and answer[0]["steps"] == 2
    assert "model.delta" in types and types.count("model.receipt") == 2
    assert payload(events[-1])["output"]["answer"] == "Oslo is mild, and 2 + 3 = 5."
    assert llm.stats()["by_prompt"][question] == 2


async def test_approval_survives_kill_of_the_executor_and_no_model_call_repeats(bed: dict[str, Any]) -> None:
    # refund is "ask": the run waits for a human; its agentd is killed -9 while it waits; the janitor resumes
    # the run on the other node, which waits for the same approval; approved from the SDK, the refund runs
    # once, and the finished model call is replayed from the log, not asked again.
    llm, cluster, ledger = bed["llm"], bed["cluster"], bed["ledger"]
    order = f"A{uuid.uuid4().hex[:6]}"
    question = f"please refund order {order}"
    llm.reset({"rules": [
        {"match": question, "times": 1, "tool_calls": [{"name": "refund", "arguments": {"order_id": order,
                                                                                     "amount": 10}}]},
        {"match": question, "reply": f"Order {order} was refunded."}]})
    async with RunClient(endpoints(cluster)) as runs:
        run_id = f"llm-{uuid.uuid4().hex[:8]}"
        await runs.start("helper", question, run_id=run_id)
        events = await events_until(runs, run_id, lambda e: e.type == "tool.approval_requested")
        request = payload(events[-1])
        assert request["tool"] == "refund" and request["reason"] == "refunds need a human"
        call_id = request["tool_call_id"]
        before = (await runs.get(run_id)).executor.node_id
        victim = executing_agentd(cluster, before)
        cluster.kill_daemon(victim)
        try:
            async def moved() -> bool:
                run = await runs.get(run_id)
                return bool(run.executor.node_id) and run.executor.node_id != before
            await _async_wait(moved, 60, "the janitor resumed the run on the other node")
            assert ledger_calls(ledger, "refund") == [] or all(c["arguments"]["order_id"] != order
                                                                for c in ledger_calls(ledger, "refund"))
            decision = await runs.approve(run_id, call_id, note="ok by ops")
            assert not decision.duplicate
            assert (await runs.approve(run_id, call_id, note="ok by ops")).duplicate  # a replay
            with pytest.raises(FailedPrecondition) as decided:
                await runs.deny(run_id, call_id)
            assert decided.value.reason == "APPROVAL_DECIDED"
            events = await events_until(runs, run_id, lambda e: False)
        finally:
            cluster.restart_daemon(victim)
    assert events[-1].type == "run.completed", [e.type for e in events][-8:]
    assert "run.executor_lost" in [e.type for e in events]
    assert [c["arguments"]["order_id"] for c in ledger_calls(ledger, "refund")].count(order) == 1
    assert llm.stats()["by_prompt"][question] == 2  # model call 0 before the crash, 1 after: none twice


async def test_denied_and_unknown_decisions(bed: dict[str, Any]) -> None:
    # Denied from the CLI: the refund never runs, the model is told and answers anyway.
    llm, cluster, ledger = bed["llm"], bed["cluster"], bed["ledger"]
    order = f"B{uuid.uuid4().hex[:6]}"
    question = f"refund order {order} now"
    llm.reset({"rules": [
        {"match": question, "times": 1, "tool_calls": [{"name": "refund", "arguments": {"order_id": order,
                                                                                     "amount": 3}}]},
        {"match": question, "reply": "I could not refund it: a human said no."}]})
    async with RunClient(endpoints(cluster)) as runs:
        run_id = f"llm-{uuid.uuid4().hex[:8]}"
        await runs.start("helper", question, run_id=run_id)
        events = await events_until(runs, run_id, lambda e: e.type == "tool.approval_requested")
        call_id = payload(events[-1])["tool_call_id"]
        with pytest.raises(NotFound) as unknown:
            await runs.approve(run_id, "tc_nonexistent")
        assert unknown.value.reason == "APPROVAL_NOT_FOUND"
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mabeam_client.cli", "run", "deny", run_id, call_id, "--note", "not this one",
            "--agentd", ",".join(endpoints(cluster)), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(cli.communicate(), 60)
        assert cli.returncode == 0 and b"denied" in out, err
        events = await events_until(runs, run_id, lambda e: False)
    assert events[-1].type == "run.completed"
    receipt = next(payload(e) for e in events if e.type == "tool.receipt")
    assert receipt["state"] == "failed" and receipt["error_class"] == "approval_denied"
    assert order not in [c["arguments"]["order_id"] for c in ledger_calls(ledger, "refund")]


async def test_approval_deadline_passes_then_a_late_approval_is_refused(bed: dict[str, Any]) -> None:
    llm, cluster = bed["llm"], bed["cluster"]
    question = f"quick refund {uuid.uuid4().hex[:6]}"
    llm.reset({"rules": [
        {"match": question, "times": 1, "tool_calls": [{"name": "refund", "arguments": {"order_id": "Z",
                                                                                     "amount": 1}}]},
        {"match": question, "reply": "Nobody approved in time."}]})
    async with RunClient(endpoints(cluster)) as runs:
        run_id = f"llm-{uuid.uuid4().hex[:8]}"
        await runs.start("hasty", question, run_id=run_id)
        events = await events_until(runs, run_id, lambda e: False)
        call_id = next(payload(e) for e in events if e.type == "tool.approval_requested")["tool_call_id"]
        with pytest.raises(FailedPrecondition) as late:
            await runs.approve(run_id, call_id)
        assert late.value.reason in ("APPROVAL_EXPIRED", "RUN_TERMINAL")
    types = [e.type for e in events]
    assert "tool.approval_expired" in types and types[-1] == "run.completed"
    receipt = next(payload(e) for e in events if e.type == "tool.receipt")
    assert receipt["error_class"] == "approval_expired"


async def test_a_side_effecting_tool_never_runs_twice_across_kill_9(bed: dict[str, Any]) -> None:
    # refund (dedupe_reconcile_required) is in flight when its agentd dies; the resumed run must not refund
    # again blindly: the task fails with reconcile_required, and the model is told.
    llm, cluster, ledger = bed["llm"], bed["cluster"], bed["ledger"]
    order = f"C{uuid.uuid4().hex[:6]}"
    question = f"pay back order {order}"
    llm.reset({"rules": [
        {"match": question, "times": 1, "tool_calls": [{"name": "refund", "arguments": {
            "order_id": order, "amount": 5, "hold_s": 60}}]},
        {"match": question, "reply": "The refund may have happened; a human must check."}]})
    async with RunClient(endpoints(cluster)) as runs:
        run_id = f"llm-{uuid.uuid4().hex[:8]}"
        await runs.start("payer", question, run_id=run_id)
        wait_until(lambda: order in [c["arguments"]["order_id"] for c in ledger_calls(ledger, "refund")], 60,
                   what="the refund started")
        node = (await runs.get(run_id)).executor.node_id
        victim = executing_agentd(cluster, node)
        cluster.kill_daemon(victim)
        try:
            events = await events_until(runs, run_id, lambda e: False, timeout=120)
        finally:
            cluster.restart_daemon(victim)
    assert events[-1].type == "run.completed", [e.type for e in events][-8:]
    receipts = [payload(e) for e in events if e.type == "tool.receipt"]
    assert receipts[-1]["error_class"] == "reconcile_required"
    assert [c["arguments"]["order_id"] for c in ledger_calls(ledger, "refund")].count(order) == 1


async def _async_wait(predicate: Any, timeout: float, what: str) -> None:
    from mabeam.dev.testing import async_wait_until

    await async_wait_until(predicate, timeout, interval=0.1, what=what)


async def test_tokens_stream_live_over_sse_and_resume_mid_message_on_another_node(bed: dict[str, Any]) -> None:
    # The model call of a run streams its deltas into the log as they arrive: an SSE client reads part of
    # the message from node-1, disconnects, resumes with Last-Event-ID on node-2 and gets the rest, gap-free.
    import httpx

    llm, cluster = bed["llm"], bed["cluster"]
    question = f"tell a story {uuid.uuid4().hex[:6]}"
    story = " ".join(f"word{i}" for i in range(40))
    llm.reset({"rules": [{"match": question, "reply": story, "fault": {"chunk_delay_ms": 60}}]})
    async with RunClient(endpoints(cluster)) as runs:
        run_id = f"llm-{uuid.uuid4().hex[:8]}"
        await runs.start("helper", question, run_id=run_id)
    first, second = (f"http://{n.agentd.http_endpoint}/v1/runs/{run_id}/stream" for n in cluster.nodes)
    seqs: list[int] = []
    text = ""
    async with httpx.AsyncClient(timeout=60) as http:
        async with http.stream("GET", first) as response:
            deltas = 0
            async for data, seq in _sse(response):
                seqs.append(seq)
                if data["type"] == "model.delta":
                    text += data["payload"].get("text", "")
                    deltas += 1
                    if deltas == 5:
                        break  # hang up mid-message
        async with http.stream("GET", second, headers={"Last-Event-ID": str(seqs[-1])}) as response:
            async for data, seq in _sse(response):
                seqs.append(seq)
                if data["type"] == "model.delta":
                    text += data["payload"].get("text", "")
    assert seqs == list(range(1, len(seqs) + 1))
    assert text == story
    assert llm.stats()["by_prompt"][question] == 1


async def _sse(response: Any) -> Any:
    """(data, seq) of each event of an SSE response until [DONE]."""
    import json as _json

    event: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line:
            name, _, value = line.partition(":")
            event[name] = value.lstrip(" ")
            continue
        if event.get("data") == "[DONE]":
            return
        if "id" in event:
            yield _json.loads(event["data"]), int(event["id"])
        event = {}
