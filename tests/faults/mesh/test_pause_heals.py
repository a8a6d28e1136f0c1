"""A paused meshd heals by itself: names, groups and the attached agentd come back after SIGSTOP/SIGCONT.

The scenario of issue 10: three nodes with agentd, a named agent and a group member on node-3, node-3's meshd
frozen with SIGSTOP past its lease TTL (so etcd expires its lease and every key under it), then SIGCONT.
Within TTL + 2 s the name resolves on every node and a call from node-3's agentd to an agent on node-1 works.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request

from mabeam import keys
from mabeam.dev.testing import async_wait_until, slow
from mabeam.etcd.client import EtcdClient
from mabeam_client.agents import AgentClient
from mabeam_client.errors import NotFound
from mabeam_client.mesh import MeshClient

TTL = 2
PAUSE = 5.0


async def _resolves_everywhere(meshes: list[MeshClient], name: str, node_id: str) -> bool:
    for mesh in meshes:
        entry = await mesh.lookup(name)
        if entry.target.node_id != node_id:
            return False
    return True


async def _gone_somewhere(meshes: list[MeshClient], name: str) -> bool:
    for mesh in meshes:
        try:
            await mesh.lookup(name)
        except NotFound:
            return True
    return False


async def test_sigstop_past_the_lease_ttl_then_sigcont_heals_names_groups_and_attach(dev_cluster) -> None:
    cluster = dev_cluster(3, lease_ttl=TTL, agentd=True)
    node1, node3 = cluster.nodes[0], cluster.nodes[2]
    meshes = [MeshClient(node.endpoint) for node in cluster.nodes]
    try:
        async with AgentClient(node1.agentd.endpoint) as a1, AgentClient(node3.agentd.endpoint) as a3:
            await a1.spawn("counter", {"start": 7}, name="n1counter")
            await a3.spawn("counter", {"start": 3}, name="n3counter")
            await a3.spawn("member", {"groups": ["crew3"]}, name="n3member")
            await a3.spawn("relay", {}, name="n3relay")
            await async_wait_until(lambda: _resolves_everywhere(meshes, "n3counter", "node-3"), 10,
                                   what="n3counter registered everywhere")
            await async_wait_until(lambda: _resolves_everywhere(meshes, "n1counter", "node-1"), 10,
                                   what="n1counter registered everywhere")
            assert await a3.call("n3relay", {"to": "n1counter", "msg": "get"}) == 7

            node3.meshd.pause()
            paused = time.monotonic()
            try:
                # The lease expires in etcd: the other nodes see node-3's name go (proof the pause mattered).
                await async_wait_until(lambda: _gone_somewhere(meshes[:2], "n3counter"), TTL + PAUSE,
                                       what="node-3's lease expired while paused")
                await asyncio.sleep(max(0.0, PAUSE - (time.monotonic() - paused)))  # the fault's length, not a sync
            finally:
                node3.meshd.resume()
            resumed = time.monotonic()

            await async_wait_until(lambda: _resolves_everywhere(meshes, "n3counter", "node-3"), TTL + 2,
                                   interval=0.05, what="n3counter resolves on every node after SIGCONT")

            async def relayed() -> bool:
                return await a3.call("n3relay", {"to": "n1counter", "msg": "get", "timeout": 1.0}) == 7

            await async_wait_until(relayed, TTL + 2, interval=0.05,
                                   what="a call from node-3's agentd to node-1 after SIGCONT")
            healed = time.monotonic() - resumed
            assert healed <= slow(TTL + 2), f"healed after {healed:.2f}s"

            async def crew_back() -> bool:
                for mesh in meshes:
                    if [m.member.node_id for m in await mesh.group_members("crew3")] != ["node-3"]:
                        return False
                return True

            await async_wait_until(crew_back, TTL + 2, what="node-3's group member back on every node")
            # And the other direction: node-1 reaches the agent on the healed node by name.
            assert await a1.call("n3counter", "get") == 3
            # meshd's own stall is not its agentd's silence: the agentd was never detached.
            assert _counter(_scrape(node3.agentd.metrics_address), 'agentd_mesh_events_total{kind="detached"}') == 0
    finally:
        for mesh in meshes:
            await mesh.close()


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        return response.read().decode()


def _counter(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


async def test_a_name_taken_while_its_node_was_paused_stays_taken_and_the_owner_is_told(dev_cluster) -> None:
    # node-3's agent holds "contested"; node-3's meshd is frozen past its lease, another owner registers the
    # name meanwhile. After SIGCONT the name stays with the new owner everywhere; node-3's meshd counts and
    # logs the loss and tells the attached agentd, which counts it too.
    cluster = dev_cluster(3, lease_ttl=TTL, agentd=True)
    node3 = cluster.nodes[2]
    meshes = [MeshClient(node.endpoint) for node in cluster.nodes]
    try:
        async with AgentClient(node3.agentd.endpoint) as a3:
            await a3.spawn("counter", {"start": 1}, name="contested")
            await async_wait_until(lambda: _resolves_everywhere(meshes, "contested", "node-3"), 10,
                                   what="contested registered everywhere")
            node3.meshd.pause()
            try:
                async def free_on_node1() -> bool:
                    try:
                        await meshes[0].lookup("contested")
                        return False
                    except NotFound:
                        return True

                await async_wait_until(free_on_node1, TTL + PAUSE, what="node-3's lease expired")
                await meshes[0].register_name("contested", "usurper")
            finally:
                node3.meshd.resume()

            await async_wait_until(lambda: _counter(_scrape(node3.metrics_address),
                                                    "mabeam_registry_names_lost_total") == 1, TTL + 5,
                                   what="node-3's meshd counted the lost name")
            await async_wait_until(lambda: _counter(_scrape(node3.agentd.metrics_address),
                                                    'agentd_mesh_events_total{kind="names_lost"}') == 1, 5,
                                   what="node-3's agentd was told")
            assert "was taken by agent usurper on node node-1" in node3.meshd.output()
            for mesh in meshes:
                entry = await mesh.lookup("contested")
                assert (entry.target.node_id, entry.target.agent_id) == ("node-1", "usurper")
            assert await a3.call("contested", "get") == 1  # the agent itself keeps running
    finally:
        for mesh in meshes:
            await mesh.close()


async def test_a_paused_agentd_detached_by_meshd_reattaches_and_registers_its_names_again(dev_cluster) -> None:
    # agentd (not meshd) frozen longer than meshd's attach expiry: meshd detaches it and drops its names.
    # After SIGCONT its next heartbeat is answered DETACHED; it re-attaches and registers everything again.
    cluster = dev_cluster(2, lease_ttl=TTL, agentd=True)
    node1, node2 = cluster.nodes
    meshes = [MeshClient(node.endpoint) for node in cluster.nodes]
    try:
        async with AgentClient(node1.agentd.endpoint) as a1, AgentClient(node2.agentd.endpoint) as a2:
            await a1.spawn("counter", {"start": 4}, name="far")
            await a2.spawn("relay", {}, name="n2relay")
            await a2.spawn("member", {"groups": ["crew2"]}, name="n2member")
            async def crew_back() -> bool:
                return [m.member.node_id for m in await meshes[0].group_members("crew2")] == ["node-2"]

            await async_wait_until(lambda: _resolves_everywhere(meshes, "n2member", "node-2"), 10,
                                   what="n2member registered")
            await async_wait_until(crew_back, 10, what="group joined")
            node2.agentd.pause()
            try:
                await async_wait_until(lambda: _gone_somewhere(meshes, "n2relay"), 15,
                                       what="meshd detached the silent agentd and dropped its names")
            finally:
                node2.agentd.resume()
            for name in ("n2relay", "n2member"):
                await async_wait_until(lambda n=name: _resolves_everywhere(meshes, n, "node-2"), 10,
                                       what=f"{name} registered again after the re-attach")
            await async_wait_until(crew_back, 10, what="group membership restored")
            assert await a2.call("n2relay", {"to": "far", "msg": "get"}) == 4
            assert await a1.call("n2relay", {"to": "far", "msg": "get"}) == 4
            events = _scrape(node2.agentd.metrics_address)
            assert _counter(events, 'agentd_mesh_events_total{kind="detached"}') == 1
            assert _counter(events, 'agentd_mesh_events_total{kind="reattached"}') == 1
    finally:
        for mesh in meshes:
            await mesh.close()


async def test_a_restarted_meshd_gets_its_agentd_back_with_its_names(dev_cluster) -> None:
    # kill -9 of node-2's meshd, then a new meshd on the same host (same attach address): the running agentd
    # re-attaches to it and its names come back under the new incarnation's lease, so they outlive the old one.
    cluster = dev_cluster(2, lease_ttl=TTL, agentd=True)
    node1, node2 = cluster.nodes
    etcd = EtcdClient([cluster.etcd_endpoint])
    name_key = keys.name(cluster.cluster, "default", "survivor")
    member_key = keys.member(cluster.cluster, "node-2")
    try:
        async with AgentClient(node1.agentd.endpoint) as a1, AgentClient(node2.agentd.endpoint) as a2:
            await a2.spawn("counter", {"start": 9}, name="survivor")
            await async_wait_until(lambda: a1.call("survivor", "get"), 10, what="survivor reachable from node-1")
            old_lease = (await etcd.get(member_key)).lease
            node2.meshd.kill()
            cluster.restart(node2.meshd)

            async def under_the_new_lease() -> bool:
                member, name = await etcd.get(member_key), await etcd.get(name_key)
                return (member is not None and name is not None and member.lease != old_lease
                        and name.lease == member.lease)

            # The new meshd claims node-2 once the old key expires; the agentd re-attaches and its name moves
            # under the new incarnation's lease (so it does not vanish when the old lease expires).
            await async_wait_until(under_the_new_lease, TTL + 15, what="survivor under the new meshd's lease")
            assert await a1.call("survivor", "get") == 9
    finally:
        await etcd.close()
