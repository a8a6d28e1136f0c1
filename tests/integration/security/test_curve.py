"""CURVE on the data plane, end to end through meshd: members talk; a node without the cluster's keys cannot
join the data plane; a rogue key is refused.

The secure dev cluster runs every meshd with ``[dataplane] curve = true``; each publishes its public key in
its etcd membership (NodeInfo.curve_public_key) and accepts only the keys of live members. An intruder
meshd on the same etcd and cluster but without CURVE becomes a member of the cluster view, yet no message
crosses between it and the members in either direction; a process with a CURVE key no member announced is
denied at the handshake (counted on /metrics) and delivers nothing.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from mabeam.dataplane.attach import AttachedEndpoint
from mabeam.dataplane.errors import DataPlaneError
from mabeam.dataplane.message import AgentRef
from mabeam.dev.cluster import DevCluster
from mabeam.dev.testing import async_wait_until
from mabeam_client.mesh import MeshClient


async def _echo(endpoint: AttachedEndpoint, got: list[bytes]) -> None:
    while True:
        message = await endpoint.receive()
        got.append(bytes(message.payload))
        if message.is_call:
            endpoint.reply_nowait(message, bytes(message.payload))


def _denied(metrics: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("mabeam_dataplane_rejected_frames_total{") and 'reason="curve_denied"' in line)


async def test_members_talk_an_intruder_without_keys_cannot_and_a_rogue_key_is_refused(
        secure_cluster: DevCluster) -> None:
    assert secure_cluster.security is not None
    one, two = secure_cluster.nodes
    echo_id = f"echo-{uuid.uuid4().hex[:6]}"
    got: list[bytes] = []
    echo = await AttachedEndpoint.connect(two.attach_address, echo_id)
    server = asyncio.create_task(_echo(echo, got))
    member = await AttachedEndpoint.connect(one.attach_address, f"member-{uuid.uuid4().hex[:6]}")
    target = AgentRef("default", two.node_id, echo_id)
    intruder = DevCluster(1, etcd=secure_cluster.etcd_endpoint, cluster=secure_cluster.cluster, lease_ttl=2,
                          node_prefix="intruder-")  # no security: a plain data plane, on loopback
    try:
        async def answered() -> bool:
            return bytes((await member.call(target, b"member", timeout=1)).payload) == b"member"

        await async_wait_until(answered, 20, interval=0.05, what="a member's call over CURVE")

        # A meshd without the cluster's keys: it joins the cluster view in etcd, but not the data plane.
        await asyncio.to_thread(intruder.start)
        node = intruder.nodes[0]
        async with MeshClient(one.endpoint, security=secure_cluster.security.client()) as mesh:
            async def listed() -> bool:
                return node.node_id in {m.node_id for m in await mesh.members()}

            await async_wait_until(listed, 20, interval=0.05, what="the intruder in the members' view")
        outsider = await AttachedEndpoint.connect(node.attach_address, "outsider")
        inside = await AttachedEndpoint.connect(node.attach_address, "inside-echo")
        try:
            for _ in range(3):
                with pytest.raises(DataPlaneError):
                    await outsider.call(target, b"from the intruder", timeout=1)
            with pytest.raises(DataPlaneError):
                await member.call(AgentRef("default", node.node_id, "inside-echo"), b"to the intruder", timeout=1)
            assert inside.receive_nowait() is None
        finally:
            await outsider.close()
            await inside.close()

        # A rogue CURVE key (a data plane that knows node-2's address and key, but no member announced its
        # key): denied at the handshake, counted, nothing delivered.
        from meshd.dataplane import DataPlane, DataPlaneConfig, InMemoryRegistry

        async with MeshClient(two.endpoint, security=secure_cluster.security.client()) as mesh:
            info = next(m for m in await mesh.members() if m.node_id == two.node_id)
        async with httpx.AsyncClient() as http:
            before = _denied((await http.get(f"http://{two.metrics_address}/metrics")).text)
        rogue = DataPlane("rogue", DataPlaneConfig(curve=True, curve_key_wait=0.5), InMemoryRegistry())
        await rogue.start()
        try:
            rogue.peer_up(two.node_id, dict(info.data_addresses), info.curve_public_key)
            for channel in ("control", "high", "normal", "bulk"):
                await rogue.cast(None, target, b"intrusion", channel=channel)

            async def counted() -> bool:
                async with httpx.AsyncClient() as http:
                    return _denied((await http.get(f"http://{two.metrics_address}/metrics")).text) >= before + 4

            await async_wait_until(counted, 20, interval=0.1, what="the rogue's handshakes denied on node-2")
        finally:
            await rogue.stop()
        # Members still talk, and nothing of the intruders ever reached the echo.
        assert bytes((await member.call(target, b"after", timeout=5)).payload) == b"after"
        assert not [p for p in got if p in (b"intrusion", b"from the intruder")]
    finally:
        server.cancel()
        await member.close()
        await echo.close()
        await asyncio.to_thread(intruder.close)
