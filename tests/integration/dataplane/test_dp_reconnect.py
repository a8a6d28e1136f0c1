"""A peer that dials again under the same node id while its old connections still look open (it came back
from a partition, or restarted after a pause) is heard at once: the channel ROUTERs hand the routing id
over to the new connection instead of refusing it for as long as the old one lingers (found on the netns
test bed, where a host back from a partition stayed silent to every other host)."""

from __future__ import annotations

from mabeam.dev.testing import async_wait_until
from meshd.dataplane import DataPlane, DataPlaneConfig, InMemoryRegistry


async def test_a_peer_dialling_again_under_the_same_id_is_heard() -> None:
    registry = InMemoryRegistry()
    config = DataPlaneConfig()
    receiver, old, new = DataPlane("b", config, registry), DataPlane("a", config, registry), \
        DataPlane("a", config, registry)
    for plane in (receiver, old, new):
        await plane.start()
    try:
        got: list[tuple[str, bytes]] = []
        rx = receiver.open_endpoint("rx", handler=lambda m: got.append((m.channel, m.payload)))
        old.peer_up("b", receiver.addresses)
        for channel in ("control", "high", "normal", "bulk"):
            await old.cast(None, rx.ref, b"old", channel=channel)
        await async_wait_until(lambda: len(got) == 4, 5, what="the first incarnation's messages")
        # `old` keeps its connections open and says nothing more; node "a" dials again from `new`.
        new.peer_up("b", receiver.addresses)
        for channel in ("control", "high", "normal", "bulk"):
            await new.cast(None, rx.ref, b"new", channel=channel)
        await async_wait_until(lambda: sum(p == b"new" for _, p in got) == 4, 5, what="the new connection's messages")
    finally:
        for plane in (receiver, old, new):
            await plane.stop()
