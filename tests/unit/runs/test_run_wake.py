"""The in-memory hand-off of committed events to same-node stream followers (agentd/runs/wake.py).

The hand-off may only ever save a read: whenever it is not exactly the next stretch of the log, ``take``
answers None and the follower reads the log.
"""

from __future__ import annotations

from agentd.runs.model import EventRow, NewEvent, RunRow, RunSpec
from agentd.runs.state import chain, plan_start
from agentd.runs.wake import HANDOFF_LIMIT, Wakeups


def commits(n: int, run_id: str = "r") -> list[tuple[RunRow, tuple[EventRow, ...]]]:
    """``n`` commits of one event each after run.started (seq 1): (row after it, its events)."""
    plan = plan_start(RunSpec(run_id, "default", "tasker", "enqueue"), None, 1)
    row, out = plan.row, [(plan.row, plan.events)]
    for i in range(n):
        row, events = chain(row, [NewEvent("progress", str(i))], 2)
        out.append((row, events))
    return out


def test_the_next_events_come_from_the_commit():
    wakeups = Wakeups()
    sub = wakeups.subscribe("r", handoff=True)
    log = commits(3)
    for row, events in log[1:3]:
        wakeups.committed(row, events)
    handed = sub.take(1)
    assert handed is not None
    row, events = handed
    assert row is log[2][0] and [e.seq for e in events] == [2, 3]
    assert sub.take(3) == (None, [])  # nothing new since: keep the row, no read


def test_events_already_delivered_are_dropped():
    wakeups = Wakeups()
    sub = wakeups.subscribe("r", handoff=True)
    log = commits(3)
    for row, events in log[1:]:
        wakeups.committed(row, events)
    handed = sub.take(3)  # the follower read up to 3 from the log meanwhile
    assert handed is not None and [e.seq for e in handed[1]] == [4]


def test_a_late_hand_off_older_than_the_cursor_is_nothing_new():
    wakeups = Wakeups()
    sub = wakeups.subscribe("r", handoff=True)
    log = commits(3)
    # The follower read up to 4 from the log (3-4 committed by another agentd) before this commit's hand-off ran:
    # its older row must not replace the follower's (it would wait for events that already came).
    wakeups.committed(*log[1])
    assert sub.take(4) == (None, [])


def test_a_gap_reads_the_log():
    wakeups = Wakeups()
    sub = wakeups.subscribe("r", handoff=True)
    log = commits(3)
    wakeups.committed(*log[3])  # seq 4 committed here, seq 2-3 elsewhere (another agentd on the file)
    assert sub.take(1) is None


def test_a_later_seq_announced_by_another_node_reads_the_log():
    wakeups = Wakeups()
    sub = wakeups.subscribe("r", handoff=True)
    log = commits(3)
    wakeups.committed(*log[1])
    wakeups.notify("r", 3)  # another node committed up to 3: only the log has it
    assert sub.take(1) is None
    wakeups.notify("r", 3)
    assert sub.take(3) == (None, [])  # announced and already delivered: nothing to read


def test_an_unknown_announcement_or_a_relay_reconnect_reads_the_log():
    wakeups = Wakeups()
    sub = wakeups.subscribe("r", handoff=True)
    log = commits(2)
    wakeups.committed(*log[1])
    wakeups.notify_all()
    assert sub.take(1) is None
    wakeups.committed(*log[2])
    wakeups.notify("r", 0)
    assert sub.take(2) is None


def test_a_follower_far_behind_reads_the_log():
    wakeups = Wakeups()
    sub = wakeups.subscribe("r", handoff=True)
    log = commits(HANDOFF_LIMIT + 1)
    for row, events in log[1:]:
        wakeups.committed(row, events)
    assert sub.take(1) is None


def test_clear_before_a_read_forgets_the_hand_off():
    wakeups = Wakeups()
    sub = wakeups.subscribe("r", handoff=True)
    log = commits(2)
    wakeups.committed(*log[1])
    sub.clear()  # the follower reads the log now (it gets seq 2 there)
    wakeups.committed(*log[2])
    handed = sub.take(2)
    assert handed is not None and [e.seq for e in handed[1]] == [3]


def test_subscriptions_without_hand_off_only_wake():
    wakeups = Wakeups()
    sub = wakeups.subscribe("r")
    log = commits(1)
    wakeups.committed(*log[1])
    assert sub.take(1) is None  # woken, nothing kept: read the log
    sub.close()
    assert not wakeups.followed("r")
