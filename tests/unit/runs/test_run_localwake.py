"""Same-host datagram wake-ups between agentd sharing a SQLite file (agentd/runs/localwake.py).

Real Unix datagram sockets in a temp dir; the wake-up is what a follower sees (an announced seq).
"""

from __future__ import annotations

import socket

from agentd.runs.localwake import LocalRelay, _parse, socket_name
from agentd.runs.wake import Wakeups
from mabeam.dev.testing import async_wait_until


async def test_a_commit_wakes_the_other_agentd_of_the_host(tmp_path):
    store = str(tmp_path / "runs.sqlite")
    wakeups_1, wakeups_2 = Wakeups(), Wakeups()
    one, two = LocalRelay(store, "node-1", wakeups_1), LocalRelay(store, "node/2", wakeups_2)
    one.start()
    two.start()
    try:
        assert one.active and two.active and two.path.name == "node_2.sock"
        sub = wakeups_2.subscribe("run-a", handoff=True)
        one.published("run-a", 7)
        await async_wait_until(lambda: two.received == 1, what="the datagram")
        assert sub.take(0) is None  # announced: read the log (a datagram carries no event)
        assert sub.take(7) == (None, [])  # already delivered up to 7: nothing to read
        assert one.received == 0  # no datagram to itself
        assert one.sent == 1
    finally:
        one.close()
        two.close()
    assert not one.path.exists() and not two.path.exists()


async def test_garbage_is_counted_and_ignored(tmp_path):
    wakeups = Wakeups()
    relay = LocalRelay(str(tmp_path / "runs.sqlite"), "node-1", wakeups)
    relay.start()
    sub = wakeups.subscribe("r", handoff=True)
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        for junk in (b"not json", b'["r"]', b'["r", "7"]', b'["r", true]', b'["", 3]', b'["r", 0]', b"x" * 2000):
            sender.sendto(junk, str(relay.path))
        sender.sendto(b'["r", 3]', str(relay.path))
        await async_wait_until(lambda: relay.received == 8, what="the datagrams")
        assert relay.malformed == 7
        assert sub.take(0) is None and sub.take(3) == (None, [])
    finally:
        sender.close()
        relay.close()


async def test_a_path_too_long_for_a_socket_leaves_it_off(tmp_path):
    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    relay = LocalRelay(str(deep / "runs.sqlite"), "node-1", Wakeups())
    relay.start()
    assert not relay.active
    relay.published("r", 1)  # a no-op, not an error
    relay.close()


def test_parse_and_names():
    assert _parse(b'["run-1",12]') == ("run-1", 12)
    assert _parse(b"[1, 2]") is None
    assert socket_name("node-1") == "node-1.sock"
