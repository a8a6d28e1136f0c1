"""The name/group registry over real gRPC: uniqueness, ownership, bad input."""

import asyncio
import subprocess
import sys

import pytest

from mabeam.dev.testing import async_wait_until, wait_until
from mabeam_client.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from mabeam_client.mesh import MeshClient, SyncMeshClient


async def test_twenty_concurrent_registrations_have_exactly_one_winner(dev_cluster) -> None:
    cluster = dev_cluster(3)
    clients = [MeshClient(e) for e in cluster.endpoints]
    try:
        async def attempt(i: int) -> str:
            try:
                await clients[i % 3].register_name("the-one", f"agent-{i}")
                return "won"
            except AlreadyExists as error:
                assert error.reason == "NAME_TAKEN" and "already registered" in error.message
                return "lost"

        results = await asyncio.gather(*(attempt(i) for i in range(20)))
        assert results.count("won") == 1 and results.count("lost") == 19
        winner_index = results.index("won")
        winner = (await clients[winner_index % 3].lookup("the-one")).target  # read-your-writes on its node
        assert winner.agent_id == f"agent-{winner_index}"
        for client in clients:  # every node's cache converges on the same winner
            entry = await async_wait_until(lambda c=client: c.lookup("the-one"), 5.0, what="name visible")
            assert (entry.target.node_id, entry.target.agent_id) == (winner.node_id, winner.agent_id)
    finally:
        for client in clients:
            await client.close()


def test_register_lookup_unregister_and_ownership(dev_cluster) -> None:
    cluster = dev_cluster(2)
    a, b = SyncMeshClient(cluster.endpoints[0]), SyncMeshClient(cluster.endpoints[1])
    try:
        entry = a.register_name("planner", "agent-7", metadata={"model": "large"})
        assert (entry.target.node_id, entry.target.agent_id) == ("node-1", "agent-7")
        assert a.lookup("planner").metadata["model"] == "large"  # read-your-writes on the same node
        assert a.register_name("planner", "agent-7", metadata={"model": "large"}).revision == entry.revision
        wait_until(lambda: b.lookup("planner"), 5.0, what="name visible on node-2")
        with pytest.raises(FailedPrecondition, match="owned by node 'node-1'"):
            b.unregister_name("planner")
        a.unregister_name("planner")
        with pytest.raises(NotFound):
            a.lookup("planner")
        with pytest.raises(NotFound):
            a.unregister_name("planner")
        a.join_group("workers", "w1")
        a.join_group("workers", "w1")  # idempotent
        b.join_group("workers", "w2")
        wait_until(lambda: [m.member.agent_id for m in a.group_members("workers")] == ["w1", "w2"], 2.0,
                   what="group members from both nodes")
        assert [(g.group, g.member_count) for g in a.groups()] == [("workers", 2)]
        assert a.leave_group("workers", "w1") is True
        assert a.leave_group("workers", "w1") is False
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"name": "", "agent_id": "a"}, "name"),
    ({"name": "x" * 200, "agent_id": "a"}, "name"),
    ({"name": "bad name!", "agent_id": "a"}, "name"),
    ({"name": "ok", "agent_id": ""}, "target.agent_id"),
    ({"name": "ok", "agent_id": "a", "metadata": {"blob": "x" * 5000}}, "metadata"),
    ({"name": "ok", "agent_id": "a", "metadata": {f"k{i}": "v" for i in range(40)}}, "metadata"),
    ({"name": "ok", "agent_id": "a", "tenant": "bad/tenant"}, "tenant"),
])
def test_bad_registrations_are_invalid_argument_naming_the_field(dev_cluster, kwargs, field) -> None:
    cluster = dev_cluster(1)
    with SyncMeshClient(cluster.endpoints[0]) as client:
        with pytest.raises(InvalidArgument) as info:
            client.register_name(**kwargs)
        assert field in info.value.field_violations and info.value.reason == "INVALID_FIELD"
        assert field in info.value.message
        assert client.names() == []  # nothing was written


def test_unknown_tenant_is_not_found_everywhere(dev_cluster) -> None:
    cluster = dev_cluster(1)
    with SyncMeshClient(cluster.endpoints[0]) as client:
        for call in (lambda: client.register_name("x", "a", tenant="ghost"), lambda: client.lookup("x", "ghost"),
                     lambda: client.names("ghost"), lambda: client.join_group("g", "a", "ghost"),
                     lambda: client.group_members("g", "ghost")):
            with pytest.raises(NotFound) as info:
                call()
            assert info.value.reason == "UNKNOWN_TENANT" and "'ghost'" in info.value.message
        with pytest.raises(InvalidArgument, match="role"):
            client.leader("bad role")


def test_bad_config_stops_startup_naming_the_field(etcd_server) -> None:
    result = subprocess.run([sys.executable, "-m", "meshd", "--etcd", etcd_server.endpoint, "--lease-ttl", "0",
                             "--grpc-port", "99999"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "lease_ttl:" in result.stderr and "grpc_port:" in result.stderr


def test_duplicate_node_id_fails_loudly(dev_cluster) -> None:
    cluster = dev_cluster(1)
    result = subprocess.run([sys.executable, "-m", "meshd", "--etcd", cluster.etcd_endpoint, "--cluster",
                             cluster.cluster, "--node-id", "node-1", "--grpc-port", "0", "--lease-ttl", "2"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 75 and "already live" in result.stderr  # EX_TEMPFAIL: systemd retries it
