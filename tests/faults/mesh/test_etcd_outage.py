"""etcd stopped (or replaced) under a running cluster: cached lookups go on, the mesh recovers by itself."""

import shutil

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mabeam.dev.testing import wait_until
from mabeam_client.errors import Unavailable
from mabeam_client.mesh import SyncMeshClient


def etcd_health(endpoint: str) -> int:
    with grpc.insecure_channel(endpoint) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service="etcd"), timeout=2).status


def test_etcd_restart_keeps_lookups_and_recovers(dev_cluster) -> None:
    cluster = dev_cluster(3, own_etcd=True)
    clients = [SyncMeshClient(e, timeout=3) for e in cluster.endpoints]
    try:
        clients[0].register_name("survivor", "agent-s")
        clients[1].join_group("crew", "agent-c")
        wait_until(lambda: clients[2].lookup("survivor") and clients[2].group_members("crew"), 2.0,
                   what="registrations visible on node-3")
        cluster.embedded.stop()
        for client, endpoint in zip(clients, cluster.endpoints, strict=True):
            wait_until(lambda c=client: not c.ping().etcd_connected, 5.0, what="outage noticed")
            wait_until(lambda e=endpoint: etcd_health(e) == health_pb2.HealthCheckResponse.NOT_SERVING, 2.0,
                       what="health reports the etcd outage")
            # Cached lookups keep working while etcd is down.
            assert client.lookup("survivor").target.agent_id == "agent-s"
            assert [m.member.agent_id for m in client.group_members("crew")] == ["agent-c"]
            assert len(client.members()) == 3
        with pytest.raises(Unavailable) as info:
            clients[0].register_name("during-outage", "agent-x")
        assert info.value.reason == "ETCD_UNAVAILABLE"
        cluster.embedded.start()
        for client, endpoint in zip(clients, cluster.endpoints, strict=True):
            wait_until(lambda c=client: c.ping().etcd_connected, 10.0, what="etcd reconnected")
            wait_until(lambda e=endpoint: etcd_health(e) == health_pb2.HealthCheckResponse.SERVING, 5.0,
                       what="health SERVING again")
        clients[0].register_name("after-outage", "agent-y")
        wait_until(lambda: clients[2].lookup("after-outage"), 3.0, what="new name visible after recovery")
        assert len(clients[1].members()) == 3 and clients[1].lookup("survivor")
    finally:
        for client in clients:
            client.close()


def test_etcd_replaced_empty_reregisters_nodes_names_and_groups(dev_cluster) -> None:
    cluster = dev_cluster(3, own_etcd=True)
    clients = [SyncMeshClient(e, timeout=3) for e in cluster.endpoints]
    try:
        clients[0].register_name("keeper", "agent-k")
        clients[1].join_group("crew", "agent-c")
        wait_until(lambda: clients[2].lookup("keeper") and clients[2].group_members("crew"), 2.0,
                   what="registrations visible")
        cluster.embedded.stop()
        shutil.rmtree(cluster.embedded.data_dir)  # a new, empty etcd on the same address
        cluster.embedded.start()
        for client in clients:
            wait_until(lambda c=client: c.ping().etcd_connected and len(c.members()) == 3
                       and c.lookup("keeper").target.agent_id == "agent-k"
                       and [m.member.agent_id for m in c.group_members("crew")] == ["agent-c"],
                       15.0, what="node, name and group re-registered in the new etcd")
        assert {c.leader().node_id for c in clients} != {""}
    finally:
        for client in clients:
            client.close()
