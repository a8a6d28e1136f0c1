"""The HTTP/SSE face of durable runs against real agentd processes (SQLite and PostgreSQL stores): every rule."""

from __future__ import annotations

import httpx
import pytest
from runs_helpers import parse_sse

from agentd.runs.retention import RetentionPolicy
from agentd.runs.store import open_store
from mabeam.dev.testing import async_wait_until


@pytest.fixture
async def http(runs_cluster):
    """HTTP clients of node-1's and node-2's agentd."""
    one = httpx.AsyncClient(base_url=f"http://{runs_cluster.nodes[0].agentd.http_endpoint}", timeout=60)
    two = httpx.AsyncClient(base_url=f"http://{runs_cluster.nodes[1].agentd.http_endpoint}", timeout=60)
    yield one, two
    await one.aclose()
    await two.aclose()


async def sse(client: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None,
              stop_after: int | None = None) -> tuple[int, list[dict]]:
    """GET an SSE stream; (status, events) — reading until the server ends it or ``stop_after`` events."""
    events: list[dict] = []
    async with client.stream("GET", path, headers=headers or {}) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, [response.json()]
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = []
        async for line in response.aiter_lines():
            lines.append(line)
            if line == "":
                events = list(parse_sse(iter(lines)))
                if stop_after is not None and len(events) >= stop_after:
                    break
        events = list(parse_sse(iter([*lines, ""])))
    return 200, events


async def test_start_201_then_200_then_409(http, run_id):
    one, two = http
    body = {"run_id": run_id, "agent_type": "tasker", "input": {"steps": 1}}
    first = await one.post("/v1/runs", json=body)
    assert first.status_code == 201 and first.json()["run_id"] == run_id
    again = await two.post("/v1/runs", json=body)
    assert again.status_code == 200 and again.json()["created_unix_ms"] == first.json()["created_unix_ms"]
    conflict = await one.post("/v1/runs", json={**body, "input": {"steps": 2}})
    assert conflict.status_code == 409 and conflict.json()["error"]["reason"] == "RUN_CONFLICT"


async def test_frames_202_then_200_then_409(http, run_id):
    one, two = http
    await one.post("/v1/runs", json={"run_id": run_id, "agent_type": "tasker"})
    frame = {"frame_id": "f-1", "type": "msg", "payload": {"steps": 1}}
    accepted = await one.post(f"/v1/runs/{run_id}/frames", json=frame)
    assert accepted.status_code == 202 and accepted.json()["duplicate"] is False
    replay = await two.post(f"/v1/runs/{run_id}/frames", json=frame)
    assert replay.status_code == 200 and replay.json() == {"duplicate": True, "seq": accepted.json()["seq"]}
    conflict = await one.post(f"/v1/runs/{run_id}/frames", json={**frame, "payload": {"steps": 9}})
    assert conflict.status_code == 409 and conflict.json()["error"]["reason"] == "FRAME_CONFLICT"
    missing = await one.post("/v1/runs/no-such-run/frames", json=frame)
    assert missing.status_code == 404 and missing.json()["error"]["reason"] == "RUN_NOT_FOUND"


async def test_unknown_paths_and_methods_get_the_contract_error_shape(http, run_id):
    one, _ = http
    missing = await one.get("/v1/nothing")
    assert missing.status_code == 404
    error = missing.json()["error"]
    assert error["reason"] == "UNKNOWN_ROUTE" and error["code"] == "NOT_FOUND"
    assert "GET /v1/nothing" in error["message"] and "POST /v1/runs/{run_id}/frames" in error["message"]
    wrong = await one.delete(f"/v1/runs/{run_id}")
    assert wrong.status_code == 405 and wrong.json()["error"]["reason"] == "UNKNOWN_ROUTE"
    assert set(wrong.headers["allow"].split(", ")) == {"GET", "HEAD"}


async def test_bad_input_gets_400_naming_the_problem(http, runs_cluster, run_id):
    one, _ = http
    bad_json = await one.post("/v1/runs", content=b"{nope", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]["message"]
    unknown = await one.post("/v1/runs", json={"agent_type": "tasker", "colour": "red"})
    assert unknown.status_code == 400 and unknown.json()["error"]["field_violations"] == {"colour": "unknown field"}
    wrong_type = await one.post("/v1/runs", json={"agent_type": 7})
    assert wrong_type.status_code == 400 and "agent_type" in wrong_type.json()["error"]["field_violations"]
    not_object = await one.post("/v1/runs", json=[1, 2])
    assert not_object.status_code == 400
    await one.post("/v1/runs", json={"run_id": run_id, "agent_type": "tasker"})
    huge = await one.post(f"/v1/runs/{run_id}/frames",
                          json={"frame_id": "big", "type": "msg", "payload": "x" * (3 * 1024 * 1024)})
    assert huge.status_code == 400 and "larger than" in huge.json()["error"]["message"]
    bad_fields = await one.post(f"/v1/runs/{run_id}/frames", json={"frame_id": "a/b", "type": "Msg"})
    assert bad_fields.status_code == 400
    assert set(bad_fields.json()["error"]["field_violations"]) == {"frame_id", "type"}


async def test_stream_is_sse_with_seq_ids_and_ends_with_done(http, run_id):
    one, two = http
    await one.post("/v1/runs", json={"run_id": run_id, "agent_type": "tasker", "input": {"steps": 2, "finish": True}})
    status, events = await sse(two, f"/v1/runs/{run_id}/stream")  # served by the node that does not execute it
    assert status == 200
    assert events[-1]["data"] == "[DONE]"
    body = events[:-1]
    assert [int(e["id"]) for e in body] == list(range(1, len(body) + 1))
    assert all(e["event"] == e["data"]["type"] and e["data"]["seq"] == int(e["id"]) for e in body)
    assert body[-1]["event"] == "run.completed" and body[-1]["data"]["payload"] == {"output": {"frames": 1, "steps": 2}}


async def test_last_event_id_reconnect_to_another_node_continues_after_it(http, run_id):
    one, two = http
    await one.post("/v1/runs", json={"run_id": run_id, "agent_type": "tasker",
                                     "input": {"steps": 6, "delay": 0.05, "finish": True}})
    _, first = await sse(one, f"/v1/runs/{run_id}/stream", stop_after=4)  # disconnect after four events
    last = int(first[3]["id"])
    _, rest = await sse(two, f"/v1/runs/{run_id}/stream", headers={"Last-Event-ID": str(last)})
    assert int(rest[0]["id"]) == last + 1
    seqs = [int(e["id"]) for e in first[:4] + rest[:-1]]
    assert seqs == list(range(1, len(seqs) + 1)) and rest[-1]["data"] == "[DONE]"
    _, by_query = await sse(two, f"/v1/runs/{run_id}/stream?cursor={last}")
    assert [e.get("id") for e in by_query] == [e.get("id") for e in rest]


async def test_stream_cursor_rules(http, runs_cluster, run_id):
    one, two = http
    both = await one.get(f"/v1/runs/{run_id}/stream?cursor=3", headers={"Last-Event-ID": "4"})
    assert both.status_code == 400 and "cursor" in both.json()["error"]["field_violations"]
    same = await one.get("/v1/runs/no-such-run/stream?cursor=3", headers={"Last-Event-ID": "3"})
    assert same.status_code == 404
    assert (await one.get(f"/v1/runs/{run_id}/stream?cursor=-1")).status_code == 400
    await one.post("/v1/runs", json={"run_id": run_id, "agent_type": "tasker", "input": {"steps": 2, "finish": True}})
    _, events = await sse(one, f"/v1/runs/{run_id}/stream")
    store = open_store(runs_cluster.runs_store)
    await store.open()
    try:
        plan = await store.retain(run_id, RetentionPolicy(history_ttl_s=0.0), 10**15)
    finally:
        await store.close()
    stale = await two.get(f"/v1/runs/{run_id}/stream", headers={"Last-Event-ID": "1"})
    assert stale.status_code == 410
    assert stale.json()["error"]["reason"] == "STALE_CURSOR" and stale.json()["error"]["retention_floor"] == plan.floor


async def test_stream_without_follow_stops_when_caught_up(http, run_id):
    one, _ = http
    await one.post("/v1/runs", json={"run_id": run_id, "agent_type": "tasker"})
    _, events = await sse(one, f"/v1/runs/{run_id}/stream?follow=false")
    assert events and events[0]["event"] == "run.started" and events[-1].get("data") != "[DONE]"


async def test_cancel_202_then_200_and_the_run_ends_canceled(http, run_id):
    one, two = http
    await one.post("/v1/runs", json={"run_id": run_id, "agent_type": "tasker", "input": {"steps": 60, "delay": 0.05}})
    first = await two.post(f"/v1/runs/{run_id}/cancel", json={"reason": "stop"})
    assert first.status_code == 202 and first.json()["duplicate"] is False
    again = await one.post(f"/v1/runs/{run_id}/cancel")
    assert again.status_code == 200 and again.json() == {"duplicate": True, "seq": first.json()["seq"]}
    _, events = await sse(two, f"/v1/runs/{run_id}/stream")
    assert events[-2]["event"] == "run.canceled" and events[-1]["data"] == "[DONE]"
    assert [e["id"] for e in events if e.get("event") == "run.cancel_requested"] == [str(first.json()["seq"])]
    snapshot = await one.get(f"/v1/runs/{run_id}")
    assert snapshot.json()["status"] == "canceled"


async def test_get_and_list(http, run_id):
    one, two = http
    await one.post("/v1/runs", json={"run_id": run_id, "agent_type": "tasker", "input": {"steps": 1},
                                     "labels": {"k": "v"}})

    async def handled():  # type: ignore[no-untyped-def]
        body = (await two.get(f"/v1/runs/{run_id}")).json()
        return body if body["counters"]["frames"] == 1 and body["frames_pending"] == 0 else None

    snapshot = await async_wait_until(handled, 20, what="the input frame handled")
    assert snapshot["executor"]["node_id"] == "node-1" and snapshot["executor"]["live"] is True
    assert snapshot["labels"] == {"k": "v"} and snapshot["retention_floor"] == 1 and snapshot["last_seq"] > 3
    missing = await one.get("/v1/runs/no-such-run")
    assert missing.status_code == 404 and missing.json()["error"]["reason"] == "RUN_NOT_FOUND"
    listed = (await one.get("/v1/runs?page_size=1000")).json()
    assert any(r["run_id"] == run_id for r in listed["runs"])
    assert (await one.get("/v1/runs?status=nope")).status_code == 400
