"""CurveZMQ: members' keys are accepted, an unknown key delivers nothing, a key announced late gets through."""

from __future__ import annotations

from mabeam.dev.testing import async_wait_until
from meshd.dataplane import DataPlane, DataPlaneConfig, InMemoryRegistry
from meshd.dataplane.testing import link


async def test_curve_members_talk_and_unknown_key_delivers_nothing() -> None:
    registry = InMemoryRegistry()
    config = DataPlaneConfig(curve=True, curve_key_wait=0.5)
    a, b, rogue = (DataPlane(name, config, registry) for name in ("n0", "n1", "rogue"))
    for plane in (a, b, rogue):
        await plane.start()
    try:
        assert a.curve_public_key and len(a.curve_public_key) == 40
        link(a, b)  # the members know each other's keys
        # The rogue knows n1's address and public key, but n1's membership never listed the rogue's key.
        rogue.peer_up("n1", b.addresses, b.curve_public_key)
        got: list[bytes] = []
        rx = b.open_endpoint("rx", handler=lambda m: got.append(m.payload))
        for channel in ("control", "high", "normal", "bulk"):
            await rogue.cast(None, rx.ref, b"intrusion", channel=channel)
        reply_target = b.open_endpoint("echo", handler=lambda m: reply_target.reply(m, m.payload))
        assert (await a.call(None, reply_target.ref, b"member", timeout=3)).payload == b"member"
        await async_wait_until(lambda: b.rejected.get("curve_denied", 0) >= 4, 5, what="rogue handshakes denied")
        await a.cast(None, rx.ref, b"from member")
        await async_wait_until(lambda: got == [b"from member"], 3, what="member message")
        assert b"intrusion" not in got
    finally:
        for plane in (a, b, rogue):
            await plane.stop()


async def test_a_peer_that_dials_before_its_key_is_announced_gets_through() -> None:
    # What every multi-host start and restart does: node a sees b's NodeInfo and dials it a moment before
    # b's own membership watch announces a's key. The handshake waits for the key instead of being
    # denied for good (libzmq never retries a denied handshake; b then heard nothing from a, ever).
    registry = InMemoryRegistry()
    config = DataPlaneConfig(curve=True)
    a, b = DataPlane("a", config, registry), DataPlane("b", config, registry)
    for plane in (a, b):
        await plane.start()
    try:
        got: list[bytes] = []
        rx = b.open_endpoint("rx", handler=lambda m: got.append(m.payload))
        a.peer_up("b", b.addresses, b.curve_public_key)
        await a.cast(None, rx.ref, b"early")
        await async_wait_until(lambda: getattr(b, "curve_handshakes_held", 0) == 4, 5, what="a's four handshakes reach b")
        b.peer_up("a", a.addresses, a.curve_public_key)  # b's watch catches up
        await a.cast(None, rx.ref, b"late")
        await async_wait_until(lambda: got == [b"early", b"late"], 5, what="both messages from a")
        assert b.rejected.get("curve_denied", 0) == 0 and b.curve_handshakes_held == 0
    finally:
        for plane in (a, b):
            await plane.stop()
