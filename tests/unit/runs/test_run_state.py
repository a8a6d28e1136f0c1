"""The run state machine and write planner (pure): idempotent starts and frames, cancel, claims and fencing."""

from __future__ import annotations

import json

import pytest

from agentd.runs import state
from agentd.runs.model import (
    ExecutorFenced,
    FrameConflict,
    NewEvent,
    RunBusy,
    RunConflict,
    RunNotFound,
    RunSpec,
    RunTerminal,
    canonical_json,
)
from mabeam.runchain import GENESIS, Link, verify

NOW = 1_700_000_000_000


def spec(**kw) -> RunSpec:  # type: ignore[no-untyped-def]
    fields = {"run_id": "r1", "tenant": "default", "agent_type": "worker", "input_policy": "enqueue",
              "labels": {}, "input": canonical_json({"task": 1})}
    fields.update(kw)
    return RunSpec(**fields)


def started(**kw):  # type: ignore[no-untyped-def]
    return state.plan_start(spec(**kw), None, NOW)


def links(events):  # type: ignore[no-untyped-def]
    return [Link(e.seq, e.type, e.version, e.payload, e.payload_sha256, e.prev_hash, e.hash) for e in events]


# --- StartRun ------------------------------------------------------------------------------------


def test_start_creates_run_started_and_the_input_frame():
    plan = started()
    assert plan.created and not plan.duplicate
    assert [e.type for e in plan.events] == ["run.started", "frame.received"]
    assert [e.seq for e in plan.events] == [1, 2]
    assert plan.row.status == "pending" and plan.row.last_seq == 2 and plan.row.frames_pending == 1
    assert plan.frame is not None and plan.frame.frame_id == "input" and plan.frame.seq == 2
    assert verify("r1", links(plan.events)).ok


def test_start_without_input_has_no_frame():
    plan = started(input=None)
    assert [e.type for e in plan.events] == ["run.started"] and plan.frame is None


def test_start_again_with_the_same_request_is_a_replay():
    first = started()
    again = state.plan_start(spec(), first.row, NOW + 5)
    assert again.duplicate and not again.events and again.row == first.row


@pytest.mark.parametrize("change", [{"agent_type": "other"}, {"input": canonical_json({"task": 2})},
                                    {"input_policy": "reject"}, {"labels": {"a": "b"}}, {"tenant": "t2"}])
def test_start_again_with_a_different_request_conflicts(change):
    first = started()
    with pytest.raises(RunConflict) as raised:
        state.plan_start(spec(**change), first.row, NOW)
    assert raised.value.reason == "RUN_CONFLICT" and raised.value.code == "ALREADY_EXISTS"


# --- frames ----------------------------------------------------------------------------------------


def test_frame_accept_then_replay_then_conflict():
    run = started().row
    plan = state.plan_frame(run, None, "r1", "f1", "msg", '{"x":1}', NOW)
    assert not plan.duplicate and plan.seq == 3 and plan.row.frames == 2 and plan.frame is not None
    replay = state.plan_frame(plan.row, plan.frame, "r1", "f1", "msg", '{"x":1}', NOW)
    assert replay.duplicate and replay.seq == 3 and not replay.events
    with pytest.raises(FrameConflict):
        state.plan_frame(plan.row, plan.frame, "r1", "f1", "msg", '{"x":2}', NOW)
    with pytest.raises(FrameConflict):
        state.plan_frame(plan.row, plan.frame, "r1", "f1", "other", '{"x":1}', NOW)


def test_frame_to_unknown_run_is_not_found():
    with pytest.raises(RunNotFound):
        state.plan_frame(None, None, "nope", "f1", "msg", "null", NOW)


def test_frame_replay_is_accepted_after_the_run_ended_but_new_frames_are_not():
    run = started().row
    accepted = state.plan_frame(run, None, "r1", "f1", "msg", "1", NOW)
    claimed = state.plan_claim(accepted.row, "r1", 10, "n1", 7, NOW, 3).row
    ended = state.plan_append(claimed, "r1", 10, [NewEvent("run.completed", '{"output":null}')], NOW).row
    assert ended.status == "completed"
    assert state.plan_frame(ended, accepted.frame, "r1", "f1", "msg", "1", NOW).duplicate
    with pytest.raises(RunTerminal):
        state.plan_frame(ended, None, "r1", "f2", "msg", "1", NOW)


def test_reject_policy_refuses_a_frame_while_one_is_pending():
    run = started(input_policy="reject").row  # the input frame is pending
    with pytest.raises(RunBusy) as raised:
        state.plan_frame(run, None, "r1", "f2", "msg", "1", NOW)
    assert raised.value.reason == "RUN_BUSY"
    claimed = state.plan_claim(run, "r1", 5, "n1", 1, NOW, 3).row
    handled = state.plan_append(claimed, "r1", 5, [NewEvent("frame.handled", '{"frame_seq":2}')], NOW).row
    assert handled.frames_pending == 0
    assert not state.plan_frame(handled, None, "r1", "f2", "msg", "1", NOW).duplicate


# --- cancel ------------------------------------------------------------------------------------------


def test_cancel_appends_once_and_blocks_new_input():
    run = started().row
    plan = state.plan_cancel(run, "r1", "user", NOW)
    assert [e.type for e in plan.events] == ["run.cancel_requested"] and plan.row.cancel_requested
    assert state.plan_cancel(plan.row, "r1", "again", NOW).duplicate
    with pytest.raises(RunTerminal):
        state.plan_frame(plan.row, None, "r1", "f9", "msg", "1", NOW)


# --- claims and fencing ----------------------------------------------------------------------------


def test_claim_sets_the_executor_and_fences_older_tokens():
    run = started().row
    first = state.plan_claim(run, "r1", 100, "node-1", 11, NOW, 3)
    assert first.row.status == "running" and first.row.executor_token == 100
    assert [e.type for e in first.events] == ["run.executor_acquired"]
    state.plan_append(first.row, "r1", 100, [NewEvent("progress", "1")], NOW)  # the holder appends
    with pytest.raises(ExecutorFenced):
        state.plan_claim(first.row, "r1", 100, "node-2", 12, NOW, 3)  # same token: refused
    second = state.plan_claim(first.row, "r1", 200, "node-2", 12, NOW, 3)
    assert [e.type for e in second.events] == ["run.executor_lost", "run.executor_acquired"]
    assert second.row.recoveries == 1 and second.row.executor_node == "node-2"
    with pytest.raises(ExecutorFenced) as raised:
        state.plan_append(second.row, "r1", 100, [NewEvent("progress", "2")], NOW)  # the deposed one
    assert raised.value.reason == "EXECUTOR_FENCED"


def test_release_then_claim_counts_no_recovery():
    run = state.plan_claim(started().row, "r1", 100, "node-1", 11, NOW, 3).row
    released = state.plan_release(run, "r1", 100, NOW).row
    assert released.status == "pending" and not released.executor_node
    again = state.plan_claim(released, "r1", 150, "node-2", 12, NOW, 3)
    assert [e.type for e in again.events] == ["run.executor_acquired"] and again.row.recoveries == 0
    with pytest.raises(ExecutorFenced):
        state.plan_append(released, "r1", 100, [NewEvent("progress", "1")], NOW)


def test_recovery_budget_exhausted_fails_the_run_deterministically():
    row = state.plan_claim(started().row, "r1", 1, "n", 1, NOW, 1).row
    row = state.plan_claim(row, "r1", 2, "n", 1, NOW, 1).row  # recovery 1 of 1
    plan = state.plan_claim(row, "r1", 3, "n", 1, NOW, 1)
    assert [e.type for e in plan.events] == ["run.executor_lost", "run.failed"]
    assert plan.row.status == "failed" and plan.row.error_class == "recovery_budget_exhausted"
    with pytest.raises(RunTerminal):
        state.plan_claim(plan.row, "r1", 4, "n", 1, NOW, 1)


def test_terminal_events_end_the_run_and_nothing_follows():
    row = state.plan_claim(started().row, "r1", 1, "n", 1, NOW, 3).row
    plan = state.plan_append(row, "r1", 1, [NewEvent("run.failed", '{"error_class":"handler_error","message":"x"}')],
                             NOW)
    assert plan.row.status == "failed" and plan.row.error_class == "handler_error" and not plan.row.executor_node
    with pytest.raises(RunTerminal):
        state.plan_append(plan.row, "r1", 1, [NewEvent("progress", "1")], NOW)
    assert state.plan_cancel(plan.row, "r1", "late", NOW).duplicate


def test_checkpoint_is_an_event_and_a_row():
    row = state.plan_claim(started().row, "r1", 1, "n", 1, NOW, 3).row
    plan = state.plan_append(row, "r1", 1, [NewEvent("progress", "1")], NOW, checkpoint='{"n":1}')
    assert [e.type for e in plan.events] == ["progress", "run.checkpoint"]
    assert plan.checkpoint is not None and plan.checkpoint.seq == plan.events[-1].seq
    assert json.loads(plan.events[-1].payload)["bytes"] == 7
    assert plan.row.checkpoints == 1 and plan.row.emitted == 1


def test_executor_cannot_append_store_events():
    row = state.plan_claim(started().row, "r1", 1, "n", 1, NOW, 3).row
    with pytest.raises(ValueError):
        state.plan_append(row, "r1", 1, [NewEvent("frame.received", "null")], NOW)


def test_the_chain_links_every_plan():
    plans = [started()]
    row = plans[0].row
    for step in range(5):
        plan = state.plan_frame(row, None, "r1", f"f{step}", "msg", str(step), NOW)
        plans.append(plan)
        row = plan.row
    events = [e for p in plans for e in p.events]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].prev_hash == GENESIS and row.last_hash == events[-1].hash
    assert verify("r1", links(events)).ok


def test_after_cancel_only_bookkeeping_a_late_step_and_the_end_are_appended():
    from agentd.runs.model import RunCanceling

    row = state.plan_claim(started().row, "r1", 1, "n", 1, NOW, 3).row
    row = state.plan_cancel(row, "r1", "stop", NOW).row
    for refused in (NewEvent("progress", "1"), NewEvent("frame.started", '{"frame_seq":2}'),
                    NewEvent("run.completed", '{"output":1}'),
                    NewEvent("step.completed", '{"authoritative":true,"key":"k","result":1}')):
        with pytest.raises(RunCanceling):
            state.plan_append(row, "r1", 1, [refused], NOW)
    with pytest.raises(RunCanceling):
        state.plan_append(row, "r1", 1, [], NOW, checkpoint="{}")
    late = state.plan_append(row, "r1", 1, [NewEvent("step.completed",
                                                     '{"authoritative":false,"key":"k","result":1}')], NOW)
    ended = state.plan_append(late.row, "r1", 1, [NewEvent("frame.handled", '{"frame_seq":2}'),
                                                  NewEvent("run.canceled", '{"reason":"stop"}')], NOW)
    assert ended.row.status == "canceled"
