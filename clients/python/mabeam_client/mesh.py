"""Client for MeshService: membership, leaders and the name/group registry of a meshd.

``MeshClient`` is async; ``SyncMeshClient`` is the same API, blocking::

    async with MeshClient("127.0.0.1:7110") as mesh:
        await mesh.register_name("planner", agent_id="agent-7")
        entry = await mesh.lookup("planner")

Errors raise the :mod:`mabeam_client.errors` tree (``AlreadyExists``,
``NotFound``, ``InvalidArgument`` with ``field_violations``, ...).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from mabeam.v1 import common_pb2, mesh_pb2, mesh_pb2_grpc
from mabeam_client.errors import translate
from mabeam_client.sync import SyncFace

T = TypeVar("T")


class MeshClient:
    """Async MeshService client on one gRPC channel to one meshd (``host:port``)."""

    def __init__(self, endpoint: str, timeout: float = 10.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._channel = grpc.aio.insecure_channel(endpoint)
        self._stub = mesh_pb2_grpc.MeshServiceStub(self._channel)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def __aenter__(self) -> MeshClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: Callable[..., Awaitable[T]], request: Any) -> T:
        try:
            return await method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise translate(error) from None

    async def _stream(self, method: Callable[..., Any], request: Any) -> AsyncIterator[Any]:
        call = method(request)
        try:
            async for item in call:
                yield item
        except grpc.RpcError as error:
            raise translate(error) from None
        finally:
            call.cancel()

    async def ping(self) -> mesh_pb2.PingResponse:
        """The node's identity and whether it reaches etcd."""
        return await self._call(self._stub.Ping, mesh_pb2.PingRequest())

    async def members(self) -> list[common_pb2.NodeInfo]:
        """Live members, ordered by node id."""
        return list((await self._call(self._stub.ListMembers, mesh_pb2.ListMembersRequest())).members)

    async def watch_members(self) -> AsyncIterator[mesh_pb2.MemberEvent]:
        """SNAPSHOT events for the current members, SNAPSHOT_DONE, then JOINED/UPDATED/LEFT."""
        async for event in self._stream(self._stub.WatchMembers, mesh_pb2.WatchMembersRequest()):
            yield event

    async def leader(self, role: str = "") -> mesh_pb2.LeaderInfo:
        """The leader of `role` ("mesh" when empty); ``node_id`` is empty when there is none."""
        return (await self._call(self._stub.GetLeader, mesh_pb2.GetLeaderRequest(role=role))).leader

    async def watch_leader(self, role: str = "") -> AsyncIterator[mesh_pb2.LeaderInfo]:
        """The current leader of `role`, then each change."""
        async for event in self._stream(self._stub.WatchLeader, mesh_pb2.WatchLeaderRequest(role=role)):
            yield event.leader

    async def register_name(self, name: str, agent_id: str, tenant: str = "",
                            metadata: dict[str, str] | None = None) -> mesh_pb2.NameEntry:
        """Register a cluster-unique name for an agent on this meshd's node."""
        request = mesh_pb2.RegisterNameRequest(tenant=tenant, name=name, metadata=metadata or {},
                                               target=common_pb2.AgentRef(agent_id=agent_id))
        return (await self._call(self._stub.RegisterName, request)).entry

    async def unregister_name(self, name: str, tenant: str = "") -> None:
        """Remove a name this meshd's node owns."""
        await self._call(self._stub.UnregisterName, mesh_pb2.UnregisterNameRequest(tenant=tenant, name=name))

    async def lookup(self, name: str, tenant: str = "") -> mesh_pb2.NameEntry:
        """Resolve a name (raises NotFound)."""
        return (await self._call(self._stub.Lookup, mesh_pb2.LookupRequest(tenant=tenant, name=name))).entry

    async def names(self, tenant: str = "", prefix: str = "") -> list[mesh_pb2.NameEntry]:
        """Registered names of a tenant, optionally by prefix."""
        request = mesh_pb2.ListNamesRequest(tenant=tenant, prefix=prefix)
        return list((await self._call(self._stub.ListNames, request)).entries)

    async def join_group(self, group: str, agent_id: str, tenant: str = "",
                         metadata: dict[str, str] | None = None) -> None:
        """Add an agent on this meshd's node to a group."""
        request = mesh_pb2.JoinGroupRequest(tenant=tenant, group=group, metadata=metadata or {},
                                            member=common_pb2.AgentRef(agent_id=agent_id))
        await self._call(self._stub.JoinGroup, request)

    async def leave_group(self, group: str, agent_id: str, tenant: str = "") -> bool:
        """Remove an agent from a group; False if it was not a member."""
        request = mesh_pb2.LeaveGroupRequest(tenant=tenant, group=group, member=common_pb2.AgentRef(agent_id=agent_id))
        return (await self._call(self._stub.LeaveGroup, request)).removed

    async def group_members(self, group: str, tenant: str = "") -> list[mesh_pb2.GroupMember]:
        """Members of a group across the cluster."""
        request = mesh_pb2.GroupMembersRequest(tenant=tenant, group=group)
        return list((await self._call(self._stub.GroupMembers, request)).members)

    async def groups(self, tenant: str = "") -> list[mesh_pb2.GroupSummary]:
        """Groups of a tenant with member counts."""
        return list((await self._call(self._stub.ListGroups, mesh_pb2.ListGroupsRequest(tenant=tenant))).groups)


class SyncMeshClient(SyncFace):
    """The blocking face of :class:`MeshClient` (same methods, no await)."""

    def __init__(self, endpoint: str, timeout: float = 10.0) -> None:
        super().__init__(lambda: MeshClient(endpoint, timeout))
