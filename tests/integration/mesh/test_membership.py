"""Membership and leader election across real meshd processes on one real etcd."""

import time

from mabeam.dev.testing import wait_until
from mabeam_client.mesh import SyncMeshClient


def member_ids(client: SyncMeshClient) -> set[str]:
    return {m.node_id for m in client.members()}


def test_three_nodes_see_each_other_within_2s(dev_cluster) -> None:
    cluster = dev_cluster(3)
    started = time.monotonic()  # the last node has just reported ready
    clients = [SyncMeshClient(e) for e in cluster.endpoints]
    try:
        expected = {"node-1", "node-2", "node-3"}
        for client in clients:
            wait_until(lambda c=client: member_ids(c) == expected, timeout=2.0, what="all three members visible")
        assert time.monotonic() - started < 2.0
        # Every node runs the same mabeam and publishes its addresses.
        for member in clients[0].members():
            assert member.grpc_address and member.metrics_address and member.lease_id
    finally:
        for client in clients:
            client.close()


def test_exactly_one_leader_and_failover_after_kill9(dev_cluster) -> None:
    cluster = dev_cluster(3, lease_ttl=2)
    clients = [SyncMeshClient(e) for e in cluster.endpoints]
    try:
        leaders = wait_until(lambda: {c.leader().node_id for c in clients} if all(c.leader().node_id for c in clients)
                             else None, timeout=5.0, what="every node knows a leader")
        assert len(leaders) == 1, f"nodes disagree on the leader: {leaders}"
        (old,) = leaders
        old_index = int(old.split("-")[1]) - 1
        old_term = clients[(old_index + 1) % 3].leader().term
        killed_at = time.monotonic()
        cluster.kill(old_index)
        survivors = [c for i, c in enumerate(clients) if i != old_index]

        def new_leader() -> str | None:
            seen = {c.leader().node_id for c in survivors}
            return seen.pop() if len(seen) == 1 and "" not in seen and old not in seen else None

        new = wait_until(new_leader, timeout=2 + 1.0, what="a new leader after kill -9")
        assert time.monotonic() - killed_at <= 3.0
        assert new != old and survivors[0].leader().term > old_term
    finally:
        for client in clients:
            client.close()


def test_sigterm_leaves_at_once_with_its_names_and_groups(dev_cluster) -> None:
    # A 10 s lease: "at once" must be told apart from the lease running out, with room for a starved machine.
    cluster = dev_cluster(3, lease_ttl=10)
    clients = [SyncMeshClient(e) for e in cluster.endpoints]
    try:
        clients[2].register_name("leaving-name", "agent-x")
        clients[2].join_group("crew", "agent-x")
        clients[0].join_group("crew", "agent-y")
        wait_until(lambda: len(clients[0].group_members("crew")) == 2, 5.0, what="group has both members")
        wait_until(lambda: clients[1].lookup("leaving-name"), 5.0, what="name visible on node-2")
        stopped_at = time.monotonic()
        assert cluster.terminate(2) == 0
        for client in clients[:2]:
            wait_until(lambda c=client: member_ids(c) == {"node-1", "node-2"}, 4.0, what="node-3 gone after SIGTERM")
            wait_until(lambda c=client: not any(e.name == "leaving-name" for e in c.names()), 4.0,
                       what="node-3's name gone")
            wait_until(lambda c=client: [m.member.agent_id for m in c.group_members("crew")] == ["agent-y"], 4.0,
                       what="node-3's group membership gone")
        assert time.monotonic() - stopped_at < 6.0  # well inside the 10 s lease: the leave was explicit
    finally:
        for client in clients:
            client.close()


def test_kill9_leaves_within_ttl_plus_1s_with_its_names_and_groups(dev_cluster) -> None:
    ttl = 2
    cluster = dev_cluster(3, lease_ttl=ttl)
    clients = [SyncMeshClient(e) for e in cluster.endpoints]
    try:
        clients[1].register_name("doomed", "agent-d")
        clients[1].join_group("crew", "agent-d")
        wait_until(lambda: clients[0].lookup("doomed") and clients[2].group_members("crew"), 2.0,
                   what="registrations visible")
        killed_at = time.monotonic()
        cluster.kill(1)
        for client in (clients[0], clients[2]):
            wait_until(lambda c=client: "node-2" not in member_ids(c) and not c.names()
                       and not c.group_members("crew"), ttl + 1.0, what="node-2 and its entries gone")
        assert time.monotonic() - killed_at <= ttl + 1.0
    finally:
        for client in clients:
            client.close()


def test_a_killed_daemon_keeps_its_ports_until_it_is_restarted_on_them(dev_cluster) -> None:
    # Between kill -9 and restart the harness holds the gRPC and metrics ports bound, so no outgoing
    # connection can be given one as its ephemeral port (the restart's "address already in use" in CI).
    import socket

    cluster = dev_cluster(1)
    meshd = cluster.nodes[0].meshd
    grpc_address, metrics_address = meshd.endpoint, meshd.metrics_address
    cluster.kill_daemon(meshd)
    for address in (grpc_address, metrics_address):
        probe = socket.socket()
        try:
            try:
                probe.bind(("127.0.0.1", int(address.rsplit(":", 1)[1])))
            except OSError:
                pass  # reserved: the outcome wanted
            else:
                raise AssertionError(f"{address} was free to anyone while meshd was down")
        finally:
            probe.close()
    cluster.restart_daemon(meshd)
    assert (meshd.endpoint, meshd.metrics_address) == (grpc_address, metrics_address)
    assert not meshd.held  # released once the restarted meshd bound them
    client = SyncMeshClient(meshd.endpoint)
    try:
        assert wait_until(lambda: "node-1" in member_ids(client), timeout=10.0, what="the restarted meshd serves")
    finally:
        client.close()
