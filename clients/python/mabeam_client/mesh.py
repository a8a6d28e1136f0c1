"""Client for MeshService: membership, leaders, the name/group registry and the data plane of a meshd.

``MeshClient`` is async; ``SyncMeshClient`` is the same API, blocking::

    async with MeshClient("127.0.0.1:7110") as mesh:
        await mesh.register_name("planner", agent_id="agent-7")
        entry = await mesh.lookup("planner")            # a NameEntry
        reply = await mesh.call("planner", b"ping")     # a Reply
        async for item in mesh.subscribe(names=["inbox"]):
            ...                                          # an Endpoint, then Delivery after Delivery

Results are the typed values of :mod:`mabeam_client.types`. Errors raise the
:mod:`mabeam_client.errors` tree (``AlreadyExists``, ``NotFound``,
``InvalidArgument`` with ``field_violations``, ...).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from mabeam.v1 import common_pb2, dataplane_pb2, mesh_pb2, mesh_pb2_grpc
from mabeam_client.errors import translate
from mabeam_client.security import ClientSecurity, open_channel
from mabeam_client.sync import SyncFace
from mabeam_client.types import (
    AgentRef,
    Delivery,
    Destination,
    Endpoint,
    GroupMember,
    GroupSummary,
    LeaderInfo,
    MemberEvent,
    NameEntry,
    NodeInfo,
    Ping,
    Reply,
    channel_number,
    destination_fields,
)

T = TypeVar("T")


class MeshClient:
    """Async MeshService client on one gRPC channel to one meshd (``host:port``)."""

    def __init__(self, endpoint: str, timeout: float = 10.0, security: ClientSecurity | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._channel = open_channel(endpoint, security)
        self._stub = mesh_pb2_grpc.MeshServiceStub(self._channel)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def __aenter__(self) -> MeshClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: Callable[..., Awaitable[T]], request: Any, timeout: float | None = None) -> T:
        try:
            return await method(request, timeout=timeout or self.timeout)
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

    async def ping(self) -> Ping:
        """The node's identity and whether it reaches etcd."""
        return Ping.from_proto(await self._call(self._stub.Ping, mesh_pb2.PingRequest()))

    async def members(self) -> list[NodeInfo]:
        """Live members, ordered by node id."""
        response = await self._call(self._stub.ListMembers, mesh_pb2.ListMembersRequest())
        return [NodeInfo.from_proto(node) for node in response.members]

    async def watch_members(self) -> AsyncIterator[MemberEvent]:
        """SNAPSHOT events for the current members, SNAPSHOT_DONE, then JOINED/UPDATED/LEFT."""
        async for event in self._stream(self._stub.WatchMembers, mesh_pb2.WatchMembersRequest()):
            yield MemberEvent.from_proto(event)

    async def leader(self, role: str = "") -> LeaderInfo:
        """The leader of `role` ("mesh" when empty); ``node_id`` is empty when there is none."""
        return LeaderInfo.from_proto((await self._call(self._stub.GetLeader, mesh_pb2.GetLeaderRequest(role=role)))
                                     .leader)

    async def watch_leader(self, role: str = "") -> AsyncIterator[LeaderInfo]:
        """The current leader of `role`, then each change."""
        async for event in self._stream(self._stub.WatchLeader, mesh_pb2.WatchLeaderRequest(role=role)):
            yield LeaderInfo.from_proto(event.leader)

    async def register_name(self, name: str, agent_id: str, tenant: str = "",
                            metadata: dict[str, str] | None = None) -> NameEntry:
        """Register a cluster-unique name for an agent on this meshd's node."""
        request = mesh_pb2.RegisterNameRequest(tenant=tenant, name=name, metadata=metadata or {},
                                               target=common_pb2.AgentRef(agent_id=agent_id))
        return NameEntry.from_proto((await self._call(self._stub.RegisterName, request)).entry)

    async def unregister_name(self, name: str, tenant: str = "") -> None:
        """Remove a name this meshd's node owns."""
        await self._call(self._stub.UnregisterName, mesh_pb2.UnregisterNameRequest(tenant=tenant, name=name))

    async def lookup(self, name: str, tenant: str = "") -> NameEntry:
        """Resolve a name (raises NotFound)."""
        request = mesh_pb2.LookupRequest(tenant=tenant, name=name)
        return NameEntry.from_proto((await self._call(self._stub.Lookup, request)).entry)

    async def names(self, tenant: str = "", prefix: str = "") -> list[NameEntry]:
        """Registered names of a tenant, optionally by prefix."""
        request = mesh_pb2.ListNamesRequest(tenant=tenant, prefix=prefix)
        return [NameEntry.from_proto(entry) for entry in (await self._call(self._stub.ListNames, request)).entries]

    async def join_group(self, group: str, agent_id: str, tenant: str = "",
                         metadata: dict[str, str] | None = None) -> None:
        """Add an agent on this meshd's node to a group."""
        request = mesh_pb2.JoinGroupRequest(tenant=tenant, group=group, metadata=metadata or {},
                                            member=common_pb2.AgentRef(agent_id=agent_id))
        await self._call(self._stub.JoinGroup, request)

    async def leave_group(self, group: str, agent_id: str, tenant: str = "") -> bool:
        """Remove an agent from a group; False if it was not a member."""
        request = mesh_pb2.LeaveGroupRequest(tenant=tenant, group=group, member=common_pb2.AgentRef(agent_id=agent_id))
        return bool((await self._call(self._stub.LeaveGroup, request)).removed)

    async def group_members(self, group: str, tenant: str = "") -> list[GroupMember]:
        """Members of a group across the cluster."""
        request = mesh_pb2.GroupMembersRequest(tenant=tenant, group=group)
        return [GroupMember.from_proto(m) for m in (await self._call(self._stub.GroupMembers, request)).members]

    async def set_tenant_quota(self, quota: mesh_pb2.TenantQuota) -> mesh_pb2.TenantQuota:
        """Set a tenant's quotas (admin); limits not given (0) are unlimited. Returns what was stored."""
        return await self._call(self._stub.SetTenantQuota, mesh_pb2.SetTenantQuotaRequest(quota=quota))

    async def tenant_usage(self, tenant: str = "") -> mesh_pb2.TenantUsage:
        """A tenant's quotas and what it uses now (default: the token's tenant)."""
        return await self._call(self._stub.GetTenantUsage, mesh_pb2.GetTenantUsageRequest(tenant=tenant))

    async def groups(self, tenant: str = "") -> list[GroupSummary]:
        """Groups of a tenant with member counts."""
        response = await self._call(self._stub.ListGroups, mesh_pb2.ListGroupsRequest(tenant=tenant))
        return [GroupSummary.from_proto(summary) for summary in response.groups]

    # --- the data plane (Send, Call, Subscribe) ---

    async def send(self, to: Destination, payload: bytes, *, tenant: str = "", sender: str = "",
                   channel: str = "normal", acknowledged: bool = False, traceparent: str = "") -> list[int]:
        """A one-way message to a name, an :class:`AgentRef` or a :class:`GroupAddress`; the message ids
        (one per receiver for a group). ``sender`` is an endpoint id on this meshd (empty: anonymous)."""
        request = dataplane_pb2.SendRequest(tenant=tenant, sender_agent_id=sender, payload=payload,
                                            channel=channel_number(channel), acknowledged=acknowledged,
                                            traceparent=traceparent, **destination_fields(to))
        return list((await self._call(self._stub.Send, request)).message_ids)

    async def call(self, to: Destination, payload: bytes, *, timeout: float = 5.0, tenant: str = "",
                   sender: str = "", channel: str = "normal", traceparent: str = "") -> Reply:
        """A request that waits for one reply (DeadlineExceeded after ``timeout`` seconds)."""
        request = dataplane_pb2.CallRequest(tenant=tenant, sender_agent_id=sender, payload=payload,
                                            channel=channel_number(channel), timeout_ms=int(timeout * 1000),
                                            traceparent=traceparent, **destination_fields(to))
        return Reply.from_proto(await self._call(self._stub.Call, request, timeout=timeout + 1.0))

    async def reply(self, to: Delivery, payload: bytes, *, sender: str, channel: str = "normal") -> int:
        """Answer a call delivered to a subscription (``sender``: the subscription's endpoint id)."""
        request = dataplane_pb2.SendRequest(tenant=to.tenant, sender_agent_id=sender, payload=payload,
                                            channel=channel_number(channel), reply_to_id=to.id,
                                            **destination_fields(to.sender))
        return int((await self._call(self._stub.Send, request)).message_ids[0])

    async def subscribe(self, *, agent_id: str = "", names: list[str] | None = None,
                        groups: list[str] | None = None, tenant: str = "",
                        max_pending: int = 0) -> AsyncGenerator[Endpoint | Delivery, None]:
        """Open an endpoint on this meshd (registering ``names``, joining ``groups``): first the
        :class:`Endpoint`, then each :class:`Delivery`. The endpoint, its names and groups go when the
        iteration stops."""
        request = dataplane_pb2.SubscribeRequest(tenant=tenant, agent_id=agent_id, names=names or [],
                                                 groups=groups or [], max_pending=max_pending)
        async for response in self._stream(self._stub.Subscribe, request):
            if response.HasField("endpoint"):
                yield Endpoint(AgentRef.from_proto(response.endpoint))
            else:
                yield Delivery.from_proto(response)


class SyncMeshClient(SyncFace):
    """The blocking face of :class:`MeshClient` (same methods, no await)."""

    def __init__(self, endpoint: str, timeout: float = 10.0, security: ClientSecurity | None = None) -> None:
        super().__init__(lambda: MeshClient(endpoint, timeout, security))
