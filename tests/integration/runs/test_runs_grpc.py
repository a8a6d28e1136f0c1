"""RunService over gRPC against real agentd processes sharing one store (SQLite and PostgreSQL): every contract rule."""

from __future__ import annotations

import json

import grpc
import pytest

from agentd.runs.retention import RetentionPolicy
from agentd.runs.store import open_store
from mabeam.dev.testing import async_wait_until
from mabeam_client.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from mabeam_client.runs import RunClient


@pytest.fixture
async def runs(runs_cluster):
    """A client of node-1's agentd and one of node-2's."""
    one = RunClient(runs_cluster.nodes[0].agentd.endpoint)
    two = RunClient(runs_cluster.nodes[1].agentd.endpoint)
    yield one, two
    await one.close()
    await two.close()


async def events_of(client: RunClient, run_id: str, cursor: int = 0, follow: bool = True) -> list:
    return [e async for e in client.stream(run_id, cursor=cursor, follow=follow)]


# --- StartRun -----------------------------------------------------------------------------------


async def test_start_is_idempotent_by_run_id(runs, run_id):
    one, two = runs
    first = await one.start("tasker", {"steps": 1}, run_id=run_id)
    assert first.created and first.run.run_id == run_id and first.run.status in ("pending", "running")
    again = await two.start("tasker", {"steps": 1}, run_id=run_id)  # same request, any node
    assert not again.created and again.run.run_id == run_id and again.run.created_unix_ms == first.run.created_unix_ms
    with pytest.raises(AlreadyExists) as raised:
        await one.start("tasker", {"steps": 2}, run_id=run_id)
    assert raised.value.reason == "RUN_CONFLICT"


async def test_start_generates_an_id_and_validates_fields(runs):
    one, _ = runs
    started = await one.start("tasker")
    assert started.created and started.run.run_id.startswith("run-")
    with pytest.raises(InvalidArgument) as raised:
        await one.start("no-such-type", run_id="bad/id", input_policy="sometimes")
    assert raised.value.reason == "INVALID_FIELD"
    assert set(raised.value.field_violations) == {"agent_type", "run_id", "input_policy"}
    with pytest.raises(InvalidArgument) as raised:
        await one.start("counter")  # allowed, but not a run agent
    assert "handle_frame" in raised.value.field_violations["agent_type"]


# --- AppendFrame --------------------------------------------------------------------------------


async def test_append_frame_accepts_replays_and_conflicts(runs, run_id):
    one, two = runs
    await one.start("tasker", run_id=run_id)
    first = await one.append(run_id, "f-1", "msg", {"steps": 1})
    assert not first.duplicate and first.seq > 0
    replay = await two.append(run_id, "f-1", "msg", {"steps": 1})
    assert replay.duplicate and replay.seq == first.seq
    with pytest.raises(AlreadyExists) as raised:
        await one.append(run_id, "f-1", "msg", {"steps": 2})
    assert raised.value.reason == "FRAME_CONFLICT"
    events = [e async for e in one.stream(run_id, follow=False)]
    assert sum(1 for e in events if e.type == "frame.received") == 1


async def test_append_frame_errors(runs, run_id):
    one, _ = runs
    with pytest.raises(NotFound) as raised:
        await one.append("no-such-run", "f-1", "msg", 1)
    assert raised.value.reason == "RUN_NOT_FOUND"
    await one.start("tasker", run_id=run_id)
    stub = one._stub
    from mabeam.v1 import run_pb2
    with pytest.raises(grpc.RpcError) as bad:
        await stub.AppendFrame(run_pb2.AppendFrameRequest(run_id=run_id, frame_id="f", type="msg",
                                                          payload_json="{not json"))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(InvalidArgument) as raised:
        await one.append(run_id, "", "Bad Type", None)
    assert set(raised.value.field_violations) == {"frame_id", "type"}


# --- StreamRun ----------------------------------------------------------------------------------


async def test_stream_from_another_node_is_gap_free_and_ends_with_the_run(runs, run_id):
    one, two = runs
    await one.start("tasker", {"steps": 3}, run_id=run_id)
    await one.append(run_id, "f-2", "msg", {"steps": 2, "finish": True})
    events = await events_of(two, run_id)  # node-2 serves a run node-1 executes
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].type == "run.completed"
    assert json.loads(events[-1].payload_json) == {"output": {"frames": 2, "steps": 5}}
    assert [e.type for e in events].count("frame.handled") == 2
    run = await two.get(run_id)
    assert run.status == "completed" and run.last_seq == events[-1].seq and run.counters.steps == 5


async def test_stream_starts_after_the_cursor(runs, run_id):
    one, two = runs
    await one.start("tasker", {"steps": 2, "finish": True}, run_id=run_id)
    full = await events_of(one, run_id)
    tail = await events_of(two, run_id, cursor=5)
    assert [e.seq for e in tail] == [e.seq for e in full[5:]] and tail[0].seq == 6
    assert [e.hash for e in tail] == [e.hash for e in full[5:]]


async def test_stream_without_follow_stops_when_caught_up(runs, run_id):
    one, _ = runs
    await one.start("tasker", run_id=run_id, input_policy="enqueue")  # no input: idles after run.started
    await async_wait_until(lambda: _status(one, run_id, "running"), 15, what="the run is claimed")
    events = await events_of(one, run_id, follow=False)
    assert [e.type for e in events][:2] == ["run.started", "run.executor_acquired"]


async def test_a_cursor_below_the_retention_floor_is_stale(runs, runs_cluster, run_id):
    one, two = runs
    await one.start("tasker", {"steps": 2, "finish": True}, run_id=run_id)
    await events_of(one, run_id)
    store = open_store(runs_cluster.runs_store)
    await store.open()
    try:  # what the janitor does with history_ttl_s: drop what the latest checkpoint covers
        plan = await store.retain(run_id, RetentionPolicy(history_ttl_s=0.0), 10**15)
    finally:
        await store.close()
    assert plan.floor > 2
    with pytest.raises(FailedPrecondition) as raised:
        await events_of(two, run_id, cursor=0)
    assert raised.value.reason == "STALE_CURSOR" and raised.value.metadata["retention_floor"] == str(plan.floor)
    tail = await events_of(two, run_id, cursor=plan.floor - 1)
    assert tail[0].seq == plan.floor and tail[-1].type == "run.completed"
    assert (await two.get(run_id)).retention_floor == plan.floor


async def test_stream_of_an_unknown_run_is_not_found(runs):
    one, _ = runs
    with pytest.raises(NotFound):
        await events_of(one, "no-such-run")


# --- CancelRun ----------------------------------------------------------------------------------


async def test_cancel_is_durable_idempotent_and_ends_the_run_canceled(runs, run_id):
    one, two = runs
    await one.start("tasker", {"steps": 50, "delay": 0.05}, run_id=run_id)
    await async_wait_until(lambda: _has(one, run_id, "progress"), 20, what="the run is working")
    first = await two.cancel(run_id, "user pressed stop")
    assert not first.duplicate and first.seq > 0
    again = await one.cancel(run_id, "again")
    assert again.duplicate and again.seq == first.seq  # a replay names the event the first one appended
    events = await events_of(two, run_id)
    types = [e.type for e in events]
    assert types[-1] == "run.canceled" and types.count("run.cancel_requested") == 1
    cancel_at = types.index("run.cancel_requested")
    assert events[cancel_at].seq == first.seq
    after = events[cancel_at + 1:]  # the store refuses new work once cancellation is in the log
    assert "progress" not in types[cancel_at:] and "run.checkpoint" not in types[cancel_at:]
    assert all(not json.loads(e.payload_json)["authoritative"] for e in after if e.type == "step.completed")
    run = await one.get(run_id)
    assert run.status == "canceled" and run.cancel_requested
    with pytest.raises(FailedPrecondition) as raised:
        await one.append(run_id, "late", "msg", {})
    assert raised.value.reason == "RUN_TERMINAL"
    ended = await one.cancel(run_id)
    assert ended.duplicate and ended.seq == first.seq


# --- GetRun / ListRuns --------------------------------------------------------------------------


async def test_get_run_snapshot(runs, run_id):
    one, two = runs
    await one.start("tasker", {"steps": 1}, run_id=run_id, labels={"team": "a"})
    run = await async_wait_until(lambda: _frames_done(two, run_id), 20, what="the input frame handled")
    assert run.executor.node_id == "node-1" and run.executor.live and run.executor.fencing_token > 0
    assert run.executor.agent == "tasker" and run.executor.lease_id != 0
    assert run.labels == {"team": "a"} and run.counters.frames == 1 and run.frames_pending == 0
    assert run.retention_floor == 1 and run.last_seq > 3 and run.input_policy == "enqueue"
    with pytest.raises(NotFound):
        await one.get("no-such-run")


async def test_list_runs_by_tenant_and_status_paged(runs):
    one, _ = runs
    tenant = f"t{json.dumps(id(runs))[-6:]}"
    for index in range(5):
        await one.start("tasker", {"finish": True}, run_id=f"{tenant}-{index}", tenant=tenant)
    page, token = await one.list(tenant=tenant, page_size=2)
    assert [r.run_id for r in page] == [f"{tenant}-4", f"{tenant}-3"] and token
    rest, last = await one.list(tenant=tenant, page_size=10, page_token=token)
    assert [r.run_id for r in rest] == [f"{tenant}-2", f"{tenant}-1", f"{tenant}-0"] and not last
    await async_wait_until(lambda: _count(one, tenant, "completed", 5), 20, what="all five completed")
    with pytest.raises(InvalidArgument):
        await one.list(tenant=tenant, status="sleeping")


# --- input policies and handler failures ----------------------------------------------------------


async def test_reject_policy_refuses_input_while_busy(runs, run_id):
    one, _ = runs
    await one.start("tasker", {"steps": 20, "delay": 0.05}, run_id=run_id, input_policy="reject")
    with pytest.raises(FailedPrecondition) as raised:
        await one.append(run_id, "f-2", "msg", {"steps": 1})
    assert raised.value.reason == "RUN_BUSY"
    await async_wait_until(lambda: _frames_done(one, run_id), 30, what="the first frame handled")
    assert not (await one.append(run_id, "f-2", "msg", {"steps": 1, "finish": True})).duplicate


async def test_interrupt_policy_cancels_the_frame_in_progress(runs, run_id):
    one, _ = runs
    await one.start("tasker", {"steps": 100, "delay": 0.05}, run_id=run_id, input_policy="interrupt")
    await async_wait_until(lambda: _has(one, run_id, "progress"), 20, what="the first frame is being handled")
    await one.append(run_id, "f-2", "msg", {"steps": 1, "finish": True})
    events = await events_of(one, run_id)
    handled = [json.loads(e.payload_json) for e in events if e.type == "frame.handled"]
    assert [(h["frame_id"], h["outcome"]) for h in handled] == [("input", "interrupted"), ("f-2", "completed")]
    assert events[-1].type == "run.completed"


async def test_a_handler_exception_fails_the_run(runs, run_id):
    one, _ = runs
    await one.start("tasker", {"steps": 1, "raise": "boom"}, run_id=run_id)
    events = await events_of(one, run_id)
    assert events[-1].type == "run.failed"
    failure = json.loads(events[-1].payload_json)
    assert failure["error_class"] == "handler_error" and failure["message"] == "boom"
    run = await one.get(run_id)
    assert run.status == "failed" and run.error_class == "handler_error"


async def test_verify_recomputes_the_chain(runs, run_id):
    one, two = runs
    await one.start("tasker", {"steps": 2, "finish": True}, run_id=run_id)
    await events_of(one, run_id)
    verdict = await two.verify(run_id)
    assert verdict.ok and verdict.checked == (await two.get(run_id)).last_seq


# --- helpers ------------------------------------------------------------------------------------


async def _status(client: RunClient, run_id: str, status: str) -> bool:
    return (await client.get(run_id)).status == status


async def _has(client: RunClient, run_id: str, type_: str) -> bool:
    return any(e.type == type_ for e in await events_of(client, run_id, follow=False))


async def _frames_done(client: RunClient, run_id: str):  # type: ignore[no-untyped-def]
    run = await client.get(run_id)
    return run if run.counters.frames and not run.frames_pending else None


async def _count(client: RunClient, tenant: str, status: str, n: int) -> bool:
    return len((await client.list(tenant=tenant, status=status, page_size=100))[0]) == n
