"""Pure cores of durable runs: the hash chain, upcasting, retention and the cursor rule, validation."""

from __future__ import annotations

import dataclasses

import pytest

from agentd.runs.model import InvalidRunRequest, StaleCursor
from agentd.runs.retention import EventMeta, RetentionPolicy, check_cursor, needed_from, plan_retention
from agentd.runs.upcasters import current_version, upcast
from agentd.runs.validation import check_run_id, check_type, json_text, raise_if
from mabeam.runchain import GENESIS, Link, event_hash, payload_digest, verify


def chain(n: int, run_id: str = "r") -> list[Link]:
    out, prev = [], GENESIS
    for seq in range(1, n + 1):
        payload = f'{{"i":{seq}}}'
        digest = payload_digest(payload)
        hash_ = event_hash(run_id, seq, "progress", 1, digest, prev)
        out.append(Link(seq, "progress", 1, payload, digest, prev, hash_))
        prev = hash_
    return out


# --- hash chain ------------------------------------------------------------------------------------


def test_chain_verifies():
    verdict = verify("r", chain(5))
    assert verdict.ok and verdict.checked == 5 and verdict.first_bad_seq == 0


def test_event_hash_is_the_documented_formula():
    import hashlib
    import json

    material = json.dumps(["r", 1, "t", 1, "ab", GENESIS], separators=(",", ":"))
    assert event_hash("r", 1, "t", 1, "ab", GENESIS) == hashlib.sha256(material.encode()).hexdigest()


@pytest.mark.parametrize("field,value,problem", [
    ("payload", '{"i":99}', "payload"),
    ("type", "tampered", "hash"),
    ("version", 2, "hash"),
    ("prev_hash", "f" * 64, "prev_hash"),
])
def test_a_tampered_event_is_named(field, value, problem):
    links = chain(5)
    links[2] = dataclasses.replace(links[2], **{field: value})
    verdict = verify("r", links)
    assert not verdict.ok and verdict.first_bad_seq == 3 and problem in verdict.problem


def test_a_gap_is_named():
    links = chain(5)
    del links[1]
    verdict = verify("r", links)
    assert not verdict.ok and verdict.first_bad_seq == 3 and "gap" in verdict.problem


def test_a_pruned_payload_still_verifies_and_a_compacted_log_starts_at_its_floor():
    links = chain(5)
    links[1] = dataclasses.replace(links[1], payload=None)
    assert verify("r", links).ok
    assert verify("r", links[2:], first_seq=3, start_prev_hash=links[1].hash).ok
    assert not verify("r", links[2:], first_seq=3, start_prev_hash=GENESIS).ok


# --- upcasting ---------------------------------------------------------------------------------------


def test_run_started_v1_is_upcast_to_v2():
    version, payload = upcast("run.started", 1, {"agent": "worker", "tenant": "default"})
    assert version == 2 == current_version("run.started")
    assert payload == {"agent_type": "worker", "tenant": "default", "input_policy": "enqueue"}


def test_current_versions_are_left_alone():
    assert upcast("run.started", 2, {"agent_type": "w"}) == (2, {"agent_type": "w"})
    assert upcast("progress", 1, [1]) == (1, [1])


# --- retention -------------------------------------------------------------------------------------


def metas() -> list[EventMeta]:
    return [EventMeta(1, "run.started", 0), EventMeta(2, "frame.received", 0),
            EventMeta(3, "frame.started", 0, frame_seq=2), EventMeta(4, "model.delta", 0),
            EventMeta(5, "run.checkpoint", 0), EventMeta(6, "frame.handled", 0, frame_seq=2),
            EventMeta(7, "frame.received", 0), EventMeta(8, "model.delta", 10_000)]


def test_needed_from_is_the_first_pending_frame():
    assert needed_from(metas()) == 7
    assert needed_from(metas()[:4]) == 2  # frame 2 received and started, not handled
    assert needed_from(metas()[:1]) == 0


def test_payloads_of_a_class_are_pruned_after_their_ttl_but_not_what_a_resume_needs():
    plan = plan_retention(metas(), 1, 0, 8, 5_000, RetentionPolicy({"model.*": 1.0}))
    assert plan.floor == 1 and plan.prune == (4,)  # seq 8 is after the pending frame and too young


def test_history_is_compacted_up_to_the_checkpoint():
    plan = plan_retention(metas(), 1, 5, 8, 5_000, RetentionPolicy(history_ttl_s=1.0))
    assert plan.floor == 6
    assert plan_retention(metas(), 1, 5, 8, 5_000, RetentionPolicy(history_ttl_s=100.0)).floor == 1
    assert plan_retention(metas(), 1, 0, 8, 5_000, RetentionPolicy(history_ttl_s=1.0)).floor == 1  # no checkpoint


def test_a_cursor_below_the_floor_is_stale():
    check_cursor(4, 5)
    check_cursor(10, 5)
    with pytest.raises(StaleCursor) as raised:
        check_cursor(3, 5)
    assert raised.value.metadata == {"retention_floor": "5"} and raised.value.http_status == 410


# --- validation ------------------------------------------------------------------------------------


def test_validation_names_every_bad_field():
    violations: dict[str, str] = {}
    check_run_id("run_id", "has/slash", violations)
    check_type("type", "run.custom", violations, agent_emitted=True)
    json_text("payload_json", "{bad", violations)
    with pytest.raises(InvalidRunRequest) as raised:
        raise_if(violations)
    assert set(raised.value.violations) == {"run_id", "type", "payload_json"}
    assert "reserved" in raised.value.violations["type"]


def test_json_text_is_canonical():
    violations: dict[str, str] = {}
    assert json_text("p", '{ "b": 1,  "a": [1, 2] }', violations) == '{"a":[1,2],"b":1}'
    assert json_text("p", "", violations) == "null" and not violations


def test_chain_hashes_match_event_hash_one_by_one_plain_or_escaped():
    from agentd.runs.model import NewEvent
    from mabeam.runchain import GENESIS, chain_hashes, event_hash, payload_digest

    events = [NewEvent("model.delta", '{"i":1}'), NewEvent('odd "type"\n', '"ü"'), NewEvent("note", "null")]
    for run_id in ("run-1", 'weird "id"'):
        prev, links = GENESIS, chain_hashes(run_id, 0, GENESIS, events)
        for seq, (event, (digest, hash_)) in enumerate(zip(events, links, strict=True), start=1):
            assert digest == payload_digest(event.payload)
            assert hash_ == event_hash(run_id, seq, event.type, event.version, digest, prev)
            prev = hash_
