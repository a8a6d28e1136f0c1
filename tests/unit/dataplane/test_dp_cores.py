"""Pure cores of the data plane: fairness, chunking, dedup, failure detection (no sockets, fake time)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.dataplane.chunking import Reassembler, split_payload
from meshd.dataplane.dedup import DedupWindow
from meshd.dataplane.failure import FailureDetector, PeerState
from meshd.dataplane.scheduler import FairScheduler

CONTROL, HIGH, NORMAL, BULK = 1, 2, 3, 4


# --- fairness -----------------------------------------------------------------

def _simulate(scheduler: FairScheduler, ready: set[int], steps: int) -> dict[int, int]:
    taken = {ch: 0 for ch in ready}
    for _ in range(steps):
        ch = scheduler.next_channel(ready)
        assert ch is not None
        units = min(scheduler.credit(ch), 1)
        scheduler.consumed(ch, max(units, 1))
        taken[ch] += 1
    return taken


def test_higher_channel_first_within_a_round() -> None:
    # With credit left, the highest-priority ready channel always wins.
    s = FairScheduler({CONTROL: 4, HIGH: 4, NORMAL: 4, BULK: 1})
    assert s.next_channel({BULK, HIGH}) == HIGH
    assert s.next_channel({BULK, CONTROL, HIGH}) == CONTROL


def test_bulk_still_progresses_under_a_high_flood() -> None:
    # High always ready: bulk gets its quantum every round, i.e. 1 of every 5 units here.
    s = FairScheduler({CONTROL: 4, HIGH: 4, NORMAL: 4, BULK: 1})
    taken = _simulate(s, {HIGH, BULK}, 1000)
    assert taken[BULK] == 200
    assert taken[HIGH] == 800


def test_idle_high_gives_bulk_everything() -> None:
    s = FairScheduler()
    assert _simulate(s, {BULK}, 50)[BULK] == 50


@given(st.sets(st.sampled_from([CONTROL, HIGH, NORMAL, BULK]), min_size=1), st.integers(1, 400))
def test_every_ready_channel_is_served_each_round(ready: set[int], steps: int) -> None:
    # Property: no ready channel waits longer than one round (sum of quanta) for a turn.
    quanta = {CONTROL: 3, HIGH: 2, NORMAL: 2, BULK: 1}
    s = FairScheduler(quanta)
    last_served = {ch: 0 for ch in ready}
    for step in range(1, steps + 1):
        ch = s.next_channel(ready)
        assert ch in ready
        s.consumed(ch, 1)
        last_served[ch] = step
        for other in ready:
            assert step - last_served[other] <= sum(quanta.values())


def test_quanta_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FairScheduler({HIGH: 0})


# --- chunking -----------------------------------------------------------------

@given(st.binary(max_size=5000), st.integers(1, 700))
def test_split_then_reassemble_is_identity(payload: bytes, size: int) -> None:
    chunks = split_payload(payload, size)
    r = Reassembler(max_message=10_000, max_bytes=20_000, timeout=5)
    result = None
    for i, chunk in enumerate(chunks):
        result = r.add("k", i, len(chunks), len(payload), bytes(chunk), now=0.0)
        if i < len(chunks) - 1:
            assert result is None
    assert result == payload
    assert r.bytes_pending == 0


def test_gap_drops_the_message() -> None:
    # A lost chunk loses the whole message (at-most-once), and frees its memory.
    r = Reassembler(max_message=100, max_bytes=100, timeout=5)
    assert r.add("k", 0, 3, 30, b"a" * 10, 0.0) is None
    with pytest.raises(ValueError, match="chunk_gap"):
        r.add("k", 2, 3, 30, b"c" * 10, 0.0)
    assert r.bytes_pending == 0 and len(r) == 0


def test_restart_from_first_chunk_replaces_partial() -> None:
    # A retransmission starts again at chunk 0.
    r = Reassembler(max_message=100, max_bytes=100, timeout=5)
    r.add("k", 0, 2, 4, b"ab", 0.0)
    assert r.add("k", 0, 2, 4, b"ab", 0.0) is None
    assert r.add("k", 1, 2, 4, b"cd", 0.0) == b"abcd"


def test_limits_and_expiry() -> None:
    r = Reassembler(max_message=10, max_bytes=15, timeout=5)
    with pytest.raises(ValueError, match="chunk_bad"):
        r.add("big", 0, 2, 11, b"x", 0.0)
    r.add("a", 0, 2, 10, b"x" * 5, 0.0)
    with pytest.raises(ValueError, match="chunk_memory"):
        r.add("b", 0, 2, 10, b"x" * 5, 0.0)
    assert r.expire(4.0) == 0
    assert r.expire(6.0) == 1
    assert r.bytes_pending == 0


# --- dedup --------------------------------------------------------------------

def test_dedup_window_rejects_duplicates_inside_the_window() -> None:
    w = DedupWindow(capacity=3)
    assert w.check_and_add(("n", 1))
    assert not w.check_and_add(("n", 1))
    for i in (2, 3, 4):
        assert w.check_and_add(("n", i))
    # id 1 left the window (capacity 3): it would be accepted again.
    assert ("n", 1) not in w
    assert w.duplicates == 1 and len(w) == 3


# --- failure detection --------------------------------------------------------

def test_silent_peer_goes_suspect_then_down_and_back() -> None:
    d = FailureDetector(suspect_after=0.6, down_after=1.2)
    d.add("b", now=0.0)
    assert d.evaluate(0.5) == []
    assert d.evaluate(0.7) == [("b", PeerState.SUSPECT)]
    assert d.evaluate(1.0) == []
    assert d.evaluate(1.3) == [("b", PeerState.DOWN)]
    assert d.heard("b", 1.4) is PeerState.DOWN
    assert d.state("b") is PeerState.ALIVE


def test_heartbeats_keep_a_peer_alive() -> None:
    d = FailureDetector(suspect_after=0.6, down_after=1.2)
    d.add("b", 0.0)
    for tick in range(1, 50):
        now = tick * 0.2
        d.heard("b", now)
        assert d.evaluate(now + 0.1) == []


def test_detector_bounds_match_the_issue() -> None:
    # Suspect within 1 s, down within 2 s, with the evaluation tick (0.1 s) added.
    from meshd.dataplane.config import DataPlaneConfig

    cfg = DataPlaneConfig()
    assert cfg.suspect_after + cfg.heartbeat_interval / 2 <= 1.0
    assert cfg.down_after + cfg.heartbeat_interval / 2 <= 2.0
