"""The test bed's invariant checks are pure functions over recorded data: each is shown catching what it must."""

from __future__ import annotations

import json

from mabeam.dev.hostbed.invariants import (
    Expectation,
    HistoryEvent,
    bid_violations,
    counter_violations,
    failure_violations,
    fencing_violations,
    registry_expectation,
    registry_violations,
)
from mabeam.dev.hostbed.load import Record
from mabeam.dev.hostbed.processes import Incarnation

ELECTION, COORD = "/c/election/coordinator/", "/c/coordinator/"


def rec(op: str, key: str, ok: bool = True, t0: float = 10.0, t1: float = 10.1, host: str = "h1", **kw) -> Record:
    return Record(op, host, key, t0, t1, kw.pop("deadline", 5.0), ok, **kw)


def put(revision: int, key: str, value: object = b"", create: int | None = None) -> HistoryEvent:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return HistoryEvent(revision, "put", key, raw, create or revision)


def delete(revision: int, key: str, create: int) -> HistoryEvent:
    return HistoryEvent(revision, "delete", key, b"", create)


# -- fencing ------------------------------------------------------------------------------------------


def test_fencing_accepts_a_clean_handover() -> None:
    history = [
        put(5, ELECTION + "a"), put(6, COORD + "leader", {"term": 5}), put(7, COORD + "inst/x/ev/1", {"term": 5}),
        put(8, ELECTION + "b"),  # a standby campaigns
        delete(9, ELECTION + "a", create=5),  # the leader's lease expires
        put(10, COORD + "leader", {"term": 8}), put(11, COORD + "inst/x/ev/2", {"term": 8}),
        put(11, COORD + "inst/x/cid/k", {"seq": 2}),
    ]
    assert fencing_violations(history, ELECTION, COORD) == []


def test_fencing_catches_a_deposed_leader_writing() -> None:
    history = [
        put(5, ELECTION + "a"), put(6, COORD + "leader", {"term": 5}), put(8, ELECTION + "b"),
        delete(9, ELECTION + "a", create=5), put(10, COORD + "leader", {"term": 8}),
        put(12, COORD + "inst/x/ev/3", {"term": 5}),  # the old leader's write after it lost the election
    ]
    problems = fencing_violations(history, ELECTION, COORD)
    assert len(problems) == 1 and "under term 5 while the elected leader's term was 8" in problems[0]


def test_fencing_catches_a_standby_writing_while_the_leader_lives() -> None:
    history = [put(5, ELECTION + "a"), put(6, COORD + "leader", {"term": 5}), put(8, ELECTION + "b"),
               put(9, COORD + "inst/x/ev/1", {"term": 8})]
    assert "under term 8" in fencing_violations(history, ELECTION, COORD)[0]


def test_fencing_catches_writes_with_no_leader_and_termless_writes_of_an_old_term() -> None:
    history = [put(5, ELECTION + "a"), put(6, COORD + "leader", {"term": 5}), delete(7, ELECTION + "a", create=5),
               put(8, COORD + "acct/t/bob", {"available": 1})]
    assert "while no candidate was elected" in fencing_violations(history, ELECTION, COORD)[0]


# -- acknowledged data --------------------------------------------------------------------------------


def test_counters_lose_nothing_answered() -> None:
    records = [rec("call", "ctr-a"), rec("call", "ctr-a"), rec("call", "ctr-a", ok=False, code="UNAVAILABLE")]
    assert counter_violations(records, {"ctr-a": 2}) == []
    assert counter_violations(records, {"ctr-a": 3}) == []  # the unanswered add landed
    assert "1 acknowledged adds lost" in counter_violations(records, {"ctr-a": 1})[0]
    assert "more than the 3 adds sent" in counter_violations(records, {"ctr-a": 4})[0]


def test_bids_must_be_durable_at_their_seq_in_a_gapless_log() -> None:
    records = [rec("bid", "h1-0", value=[1, False]), rec("bid", "h1-1", value=[2, False]),
               rec("bid", "h1-2", ok=False, code="UNAVAILABLE")]
    auction = {"h1": "auc"}
    assert bid_violations(records, {"auc": {"h1-0": 1, "h1-1": 2}}, {"auc": [1, 2]}, auction) == []
    lost = bid_violations(records, {"auc": {"h1-0": 1}}, {"auc": [1]}, auction)
    assert "h1-1" in lost[0] and "not in etcd" in lost[0]
    moved = bid_violations(records, {"auc": {"h1-0": 1, "h1-1": 3}}, {"auc": [1, 2, 3]}, auction)
    assert "etcd has seq 3" in moved[0]
    assert "without gaps" in bid_violations(records, {"auc": {"h1-0": 1, "h1-1": 2}}, {"auc": [1, 2, 4]},
                                            auction)[0]


def test_failures_must_be_typed_and_in_time() -> None:
    records = [rec("call", "x", ok=False, code="UNAVAILABLE"), rec("call", "y", ok=False, code="EXCEPTION"),
               rec("bid", "z", t0=0.0, t1=9.0, deadline=5.0)]
    problems = failure_violations(records, slack=1.0)
    assert len(problems) == 2 and "untyped: EXCEPTION" in problems[0] and "took 9.00s" in problems[1]


# -- registry -----------------------------------------------------------------------------------------


def test_registry_expectation_follows_the_owning_incarnation() -> None:
    meshd = {"h1": [Incarnation(1, started=0.0, ready=1.0, ended=50.0), Incarnation(2, started=51.0, ready=52.0)]}
    records = [rec("name", "old", t0=10, t1=10.1), rec("name", "straddle", t0=49.9, t1=51.5),
               rec("name", "new", t0=60, t1=60.1), rec("name", "failed", ok=False, t0=61, t1=61.1),
               rec("name", "late", t0=70, t1=70.1), rec("join", "g/m1", t0=60, t1=60.1)]
    names = registry_expectation(records, "name", meshd, until=65.0)
    assert names.present == {"new"} and names.absent == {"old"} and names.maybe == {"straddle", "failed", "late"}
    assert registry_expectation(records, "join", meshd).present == {"g/h1/m1"}


def test_registry_views_must_hold_the_present_and_agree_when_exact() -> None:
    expected = Expectation(present={"a"}, absent={"dead"}, maybe={"m"})
    assert registry_violations({"n1": {"a", "m"}, "n2": {"a", "m"}}, expected, exact=True) == []
    assert "misses 1" in registry_violations({"n1": set()}, expected, exact=False)[0]
    assert "whose owner died" in registry_violations({"n1": {"a", "dead"}}, expected, exact=False)[0]
    disagreeing = registry_violations({"n1": {"a", "m"}, "n2": {"a"}}, expected, exact=True)
    assert any("disagree" in p for p in disagreeing)
    assert "nobody registered" in registry_violations({"n1": {"a", "ghost"}}, expected, exact=True)[0]
