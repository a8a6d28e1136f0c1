"""CurveZMQ: members' keys are accepted, an unknown key delivers nothing."""

from __future__ import annotations

from meshd.dataplane import DataPlane, DataPlaneConfig, InMemoryRegistry
from meshd.dataplane.testing import link, wait_until


async def test_curve_members_talk_and_unknown_key_delivers_nothing() -> None:
    registry = InMemoryRegistry()
    config = DataPlaneConfig(curve=True)
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
            await rogue.send(None, rx.ref, b"intrusion", channel=channel)
        reply_target = b.open_endpoint("echo", handler=lambda m: reply_target.reply(m, m.payload))
        assert (await a.call(None, reply_target.ref, b"member", timeout=3)).payload == b"member"
        await wait_until(lambda: b.rejected.get("curve_denied", 0) >= 4, 5, "rogue handshakes denied")
        await a.send(None, rx.ref, b"from member")
        await wait_until(lambda: got == [b"from member"], 3, "member message")
        assert b"intrusion" not in got
    finally:
        for plane in (a, b, rogue):
            await plane.stop()
