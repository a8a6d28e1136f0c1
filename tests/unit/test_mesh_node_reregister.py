"""Re-registration after a lost lease copes with registrations arriving meanwhile (a pure test: the etcd
client is a stub; MeshNode's etcd I/O goes through it)."""

from __future__ import annotations

import asyncio
from typing import Any

from mabeam import keys
from mabeam.etcd.client import TxnResult
from mabeam.v1 import common_pb2, mesh_pb2
from meshd.config import MeshdConfig
from meshd.node import MeshNode


class _StubClient:
    """Every write succeeds; each group put lets the loop run, and the first one adds a group membership as a
    JoinGroup served meanwhile would."""

    def __init__(self, node: MeshNode) -> None:
        self.node = node
        self.puts: list[bytes] = []
        self.revision = 10

    async def txn(self, compare: Any, success: Any = (), failure: Any = ()) -> TxnResult:
        self.revision += 1
        return TxnResult(True, self.revision, ())

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        self.puts.append(key)
        if len(self.puts) == 1:
            late = keys.group_member("c", "default", "g", "n1", "late")
            self.node._owned_groups[late] = mesh_pb2.GroupMember(tenant="default", group="g")
        await asyncio.sleep(0)
        self.revision += 1
        return self.revision


class _Session:
    lease_id = 7


async def test_a_group_joined_during_reregistration_does_not_break_it() -> None:
    # Found on the netns test bed: a meshd back from a pause re-registered its groups while JoinGroup
    # requests kept coming, and crashed with "dictionary changed size during iteration".
    node = MeshNode(MeshdConfig(node_id="n1", cluster="c"))
    stub = _StubClient(node)
    node.client = stub  # type: ignore[assignment]
    for agent in ("a1", "a2", "a3"):
        key = keys.group_member("c", "default", "g", "n1", agent)
        node._owned_groups[key] = mesh_pb2.GroupMember(
            tenant="default", group="g", member=common_pb2.AgentRef(node_id="n1", agent_id=agent))
    node._owned_names[("default", "x")] = mesh_pb2.NameEntry(tenant="default", name="x")
    await node._reregister_owned(_Session())  # type: ignore[arg-type]
    assert len(stub.puts) == 3  # the three owned before; the late one was written under the new lease already
    assert len(node._owned_groups) == 4
