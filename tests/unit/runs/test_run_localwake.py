"""Same-host datagram wake-ups between agentd sharing a SQLite file (agentd/runs/localwake.py).

Real Unix datagram sockets in a temp dir; the wake-up is what a follower sees (an announced seq).
"""

from __future__ import annotations

import asyncio
import socket

from agentd.runs import localwake
from agentd.runs.localwake import LocalRelay, _parse, socket_name
from agentd.runs.wake import Wakeups
from mabeam.dev.testing import async_wait_until


async def test_a_commit_wakes_the_agentd_that_follow_the_run(tmp_path):
    store = str(tmp_path / "runs.sqlite")
    wakeups_1, wakeups_2, wakeups_3 = Wakeups(), Wakeups(), Wakeups()
    one = LocalRelay(store, "node-1", wakeups_1)
    two = LocalRelay(store, "node/2", wakeups_2)
    three = LocalRelay(store, "node-3", wakeups_3)
    relays = (one, two, three)
    for relay in relays:
        relay.start()
        relay.wakeups.on_follow = relay.following
    try:
        assert all(r.active for r in relays) and two.path.name == "node_2.sock"
        sub = wakeups_2.subscribe("run-a", handoff=True)  # node-2 follows run-a: it tells node-1 and node-3
        await async_wait_until(lambda: one.received == 1 and three.received == 1, what="the interest")
        one.published("run-a", 7)
        one.published("run-b", 3)  # nobody follows run-b elsewhere: no datagram
        await async_wait_until(lambda: two.received == 1, what="the wake-up")
        assert one.sent == 1 and three.received == 1  # node-3 follows nothing: not woken
        assert sub.take(0) is None  # announced: read the log (a datagram carries no event)
        assert sub.take(7) == (None, [])  # already delivered up to 7: nothing to read
        sub.close()  # the last follower of run-a on node-2: it tells the others
        await async_wait_until(lambda: one.received == 2, what="the unfollow")
        one.published("run-a", 8)
        assert one.sent == 1
    finally:
        for relay in relays:
            relay.close()
    assert not any(r.path.exists() for r in relays)


async def test_the_refresh_tells_a_new_agentd_what_is_followed(tmp_path, monkeypatch):
    monkeypatch.setattr(localwake, "REFRESH_S", 0.01)
    store = str(tmp_path / "runs.sqlite")
    wakeups_1, wakeups_2 = Wakeups(), Wakeups()
    two = LocalRelay(store, "node-2", wakeups_2)
    two.start()
    wakeups_2.on_follow = two.following
    sub = wakeups_2.subscribe("run-a")  # before node-1 exists: only the refresh can tell it
    one = LocalRelay(store, "node-1", wakeups_1)
    one.start()
    refresh = asyncio.get_running_loop().create_task(two.run())
    try:
        await async_wait_until(lambda: "run-a" in one._interest, what="the refreshed interest")
        one.published("run-a", 2)
        await async_wait_until(lambda: two.received >= 1 and sub.take(0) is None, what="the wake-up")
    finally:
        refresh.cancel()
        await asyncio.gather(refresh, return_exceptions=True)
        one.close()
        two.close()


async def test_garbage_is_counted_and_ignored(tmp_path):
    wakeups = Wakeups()
    relay = LocalRelay(str(tmp_path / "runs.sqlite"), "node-1", wakeups)
    relay.start()
    sub = wakeups.subscribe("r", handoff=True)
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        junk = (b"not json", b'["r"]', b'["r", "7"]', b'["r", true]', b'["", 3]', b'["r", 0]', b"x" * 2000,
                b'{"follow": "r"}', b'{"follow": [1]}', b'{"other": []}', b"{}",
                b'{"follow": ["r"]}')  # the last is well formed, but from a socket outside the directory
        for count, datagram in enumerate((*junk, b'["r", 3]'), 1):  # one at a time: a socket queues ~10
            sender.sendto(datagram, str(relay.path))
            await async_wait_until(lambda count=count: relay.received == count, what="the datagram")
        assert relay.malformed == len(junk) and not relay._interest
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
    assert _parse(b'{"follow": ["a"], "unfollow": ["b"]}') == {"follow": ["a"], "unfollow": ["b"]}
    assert socket_name("node-1") == "node-1.sock"
