"""MeshService over gRPC: validate the request, ask the node, answer from its view.

Every method validates its input first (INVALID_ARGUMENT naming each bad
field), reads are served from the watch-fed cache (never an etcd round trip),
and errors are raised as :class:`~mabeam.errors.ServiceError`; the daemon's
:class:`~mabeam.grpcutil.ErrorInterceptor` turns them into statuses.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Mapping

import grpc

from mabeam.errors import FieldViolation, ServiceError, raise_if
from mabeam.security.context import tenant_for
from mabeam.security.quota import QUOTAS, RESOURCES, RateLimiter, write_quota
from mabeam.v1 import common_pb2, mesh_pb2, mesh_pb2_grpc
from meshd.dataplane import DataPlane
from meshd.dataplane.grpc_face import DataPlaneServicerMixin
from meshd.node import MESH_ROLE, MeshNode, Subscription
from meshd.validation import check_agent_id, check_id, check_metadata, check_name
from meshd.view import ClusterView, LeaderChange, MemberChange


def _check_target(field: str, ref: common_pb2.AgentRef, tenant: str, node_id: str,
                  violations: list[FieldViolation]) -> None:
    check_agent_id(f"{field}.agent_id", ref.agent_id, violations)
    if ref.node_id and ref.node_id != node_id:
        violations.append(FieldViolation(
            f"{field}.node_id", f"is {ref.node_id!r} but this is node {node_id!r}; register through the agent's own meshd"))
    if ref.tenant and ref.tenant != tenant:
        violations.append(FieldViolation(f"{field}.tenant", f"is {ref.tenant!r} but the request's tenant is {tenant!r}"))


def _checked_tenant(tenant: str, names: Mapping[str, str] | None = None, violations: list[FieldViolation] | None = None,
                    ) -> str:
    """``tenant`` (what :func:`~mabeam.security.context.tenant_for` gave: the token's, or for an admin the
    request's; without security the request's, empty meaning the default) if valid; INVALID_ARGUMENT naming it,
    each ``names`` field and ``violations``.

    ``names`` maps a field to the registered name or group it carries; ``violations`` are the method's own.
    """
    found: list[FieldViolation] = []
    check_id("tenant", tenant, found)
    for field, value in (names or {}).items():
        check_name(field, value, found)
    raise_if(found + (violations or []))
    return tenant


def tenant_used(view: ClusterView, limiter: RateLimiter | None, tenant: str, now: float) -> dict[str, float]:
    """What a tenant uses now, by quota (GetTenantUsage and /metrics): counted units cluster-wide from the
    watch (agents, runs, open instances), model spend (spent + reserved) from its budget in etcd, and the
    data-plane rates on this node. ``max_mailbox`` is a bound, not a count: 0."""
    used = {name: float(len(view.holders.get((tenant, resource), ()))) for name, resource in RESOURCES.items()}
    if limiter is not None:
        used["max_messages_per_second"], used["max_bytes_per_second"] = limiter.rates(tenant, now)
    used["model_max_tokens"], used["model_max_cost_nusd"] = view.model_spend.get(tenant, (0.0, 0.0))
    return {name: used.get(name, 0.0) for name in QUOTAS}


class MeshServicer(DataPlaneServicerMixin, mesh_pb2_grpc.MeshServiceServicer):
    """The gRPC face of one :class:`MeshNode` and its data plane (Send, Call, Subscribe)."""

    def __init__(self, node: MeshNode, dataplane: DataPlane) -> None:
        self.node = node
        self.dataplane = dataplane

    # --- identity and membership ---

    async def Ping(self, request: mesh_pb2.PingRequest, context: grpc.aio.ServicerContext) -> mesh_pb2.PingResponse:
        return mesh_pb2.PingResponse(node=self.node.info, etcd_connected=self.node.etcd_connected,
                                     server_time_unix_ms=int(time.time() * 1000))

    async def ListMembers(self, request: mesh_pb2.ListMembersRequest,
                          context: grpc.aio.ServicerContext) -> mesh_pb2.ListMembersResponse:
        view = self.node.view
        return mesh_pb2.ListMembersResponse(members=[view.members[k] for k in sorted(view.members)],
                                            revision=view.revision)

    async def WatchMembers(self, request: mesh_pb2.WatchMembersRequest,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[mesh_pb2.MemberEvent]:
        # Subscribe before the snapshot so no change between the two is missed (a duplicate is harmless).
        sub = self.node.subscribe_members()
        try:
            view = self.node.view
            for node_id in sorted(view.members):
                yield mesh_pb2.MemberEvent(type=mesh_pb2.MemberEvent.SNAPSHOT, node=view.members[node_id],
                                           revision=view.revision)
            yield mesh_pb2.MemberEvent(type=mesh_pb2.MemberEvent.SNAPSHOT_DONE, revision=view.revision)
            while True:
                change = await self._next(sub)
                assert isinstance(change, MemberChange)
                yield mesh_pb2.MemberEvent(type=change.type, node=change.node, revision=change.revision)  # type: ignore[arg-type]
        finally:
            self.node.unsubscribe(sub)

    @staticmethod
    async def _next(sub: Subscription) -> MemberChange | LeaderChange:
        try:
            return await sub.next()
        except OverflowError as error:
            raise ServiceError(grpc.StatusCode.ABORTED, str(error), "SUBSCRIBER_TOO_SLOW") from None

    # --- leaders ---

    def _role(self, role: str) -> str:
        violations: list[FieldViolation] = []
        check_id("role", role, violations, required=False)
        raise_if(violations)
        return role or MESH_ROLE

    async def GetLeader(self, request: mesh_pb2.GetLeaderRequest,
                        context: grpc.aio.ServicerContext) -> mesh_pb2.GetLeaderResponse:
        role = self._role(request.role)
        return mesh_pb2.GetLeaderResponse(leader=self.node.view.leader(role))

    async def WatchLeader(self, request: mesh_pb2.WatchLeaderRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[mesh_pb2.LeaderEvent]:
        role = self._role(request.role)
        sub = self.node.subscribe_leader(role)
        try:
            yield mesh_pb2.LeaderEvent(leader=self.node.view.leader(role))
            while True:
                change = await self._next(sub)
                assert isinstance(change, LeaderChange)
                yield mesh_pb2.LeaderEvent(leader=change.leader)
        finally:
            self.node.unsubscribe(sub)

    # --- names ---

    async def RegisterName(self, request: mesh_pb2.RegisterNameRequest,
                           context: grpc.aio.ServicerContext) -> mesh_pb2.RegisterNameResponse:
        tenant = tenant_for(request.tenant)
        violations: list[FieldViolation] = []
        _check_target("target", request.target, tenant, self.node.node_id, violations)
        check_metadata("metadata", request.metadata, violations)
        _checked_tenant(tenant, {"name": request.name}, violations)
        entry = await self.node.register_name(tenant, request.name, request.target.agent_id,
                                              dict(request.metadata))
        return mesh_pb2.RegisterNameResponse(entry=entry)

    async def UnregisterName(self, request: mesh_pb2.UnregisterNameRequest,
                             context: grpc.aio.ServicerContext) -> mesh_pb2.UnregisterNameResponse:
        tenant = _checked_tenant(tenant_for(request.tenant), {"name": request.name})
        await self.node.unregister_name(tenant, request.name)
        return mesh_pb2.UnregisterNameResponse()

    async def Lookup(self, request: mesh_pb2.LookupRequest,
                     context: grpc.aio.ServicerContext) -> mesh_pb2.LookupResponse:
        tenant = _checked_tenant(tenant_for(request.tenant), {"name": request.name})
        self.node.require_tenant(tenant)
        entry = self.node.view.names.get((tenant, request.name))
        if entry is None:
            raise ServiceError(grpc.StatusCode.NOT_FOUND,
                               f"no name {request.name!r} is registered in tenant {tenant!r}", "NOT_REGISTERED")
        return mesh_pb2.LookupResponse(entry=entry)

    async def ListNames(self, request: mesh_pb2.ListNamesRequest,
                        context: grpc.aio.ServicerContext) -> mesh_pb2.ListNamesResponse:
        too_long = [FieldViolation("prefix", "is longer than 128 characters")] if len(request.prefix) > 128 else []
        tenant = _checked_tenant(tenant_for(request.tenant), violations=too_long)
        self.node.require_tenant(tenant)
        names = self.node.view.names
        entries = [names[k] for k in sorted(names) if k[0] == tenant and k[1].startswith(request.prefix)]
        return mesh_pb2.ListNamesResponse(entries=entries)

    # --- groups ---

    def _group_request(self, raw_tenant: str, group: str, member: common_pb2.AgentRef,
                       metadata: Mapping[str, str] | None = None) -> str:
        """The tenant of a join or leave whose fields are all valid."""
        tenant = tenant_for(raw_tenant)
        violations: list[FieldViolation] = []
        _check_target("member", member, tenant, self.node.node_id, violations)
        if metadata is not None:
            check_metadata("metadata", metadata, violations)
        return _checked_tenant(tenant, {"group": group}, violations)

    async def JoinGroup(self, request: mesh_pb2.JoinGroupRequest,
                        context: grpc.aio.ServicerContext) -> mesh_pb2.JoinGroupResponse:
        tenant = self._group_request(request.tenant, request.group, request.member, request.metadata)
        await self.node.join_group(tenant, request.group, request.member.agent_id, dict(request.metadata))
        return mesh_pb2.JoinGroupResponse()

    async def LeaveGroup(self, request: mesh_pb2.LeaveGroupRequest,
                         context: grpc.aio.ServicerContext) -> mesh_pb2.LeaveGroupResponse:
        tenant = self._group_request(request.tenant, request.group, request.member)
        removed = await self.node.leave_group(tenant, request.group, request.member.agent_id)
        return mesh_pb2.LeaveGroupResponse(removed=removed)

    async def GroupMembers(self, request: mesh_pb2.GroupMembersRequest,
                           context: grpc.aio.ServicerContext) -> mesh_pb2.GroupMembersResponse:
        tenant = _checked_tenant(tenant_for(request.tenant), {"group": request.group})
        self.node.require_tenant(tenant)
        return mesh_pb2.GroupMembersResponse(members=self.node.view.group_members(tenant, request.group))

    async def ListGroups(self, request: mesh_pb2.ListGroupsRequest,
                         context: grpc.aio.ServicerContext) -> mesh_pb2.ListGroupsResponse:
        tenant = _checked_tenant(tenant_for(request.tenant))
        self.node.require_tenant(tenant)
        groups = self.node.view.groups
        return mesh_pb2.ListGroupsResponse(groups=[
            mesh_pb2.GroupSummary(tenant=t, group=g, member_count=len(groups[(t, g)]))
            for (t, g) in sorted(groups) if t == tenant
        ])

    # --- tenants: quotas and usage ---

    async def SetTenantQuota(self, request: mesh_pb2.SetTenantQuotaRequest,  # noqa: N802
                             context: grpc.aio.ServicerContext) -> mesh_pb2.TenantQuota:
        """Store a tenant's quota in etcd (creating the tenant); every node enforces it from its watch."""
        quota = request.quota
        violations: list[FieldViolation] = []
        check_id("quota.tenant", quota.tenant, violations)
        for name in QUOTAS:
            value = getattr(quota, name)
            if value < 0 or (isinstance(value, float) and not math.isfinite(value)):
                violations.append(FieldViolation(f"quota.{name}", "must be a finite number >= 0 (0: unlimited)"))
        raise_if(violations)
        tenant_for(quota.tenant)  # audited as an admin action in another tenant when it is one
        if not self.node.etcd_connected:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "etcd is unavailable; retry shortly", "ETCD_UNAVAILABLE",
                               retry_after_s=0.5)
        revision = await write_quota(self.node.client, self.node.config.cluster, quota)
        await self.node.wait_revision(revision)
        return quota

    async def GetTenantUsage(self, request: mesh_pb2.GetTenantUsageRequest,  # noqa: N802
                             context: grpc.aio.ServicerContext) -> mesh_pb2.TenantUsage:
        """A tenant's quota and use: counted resources cluster-wide (from the watch), rates on this node."""
        tenant = tenant_for(request.tenant)
        violations: list[FieldViolation] = []
        check_id("tenant", tenant, violations)
        raise_if(violations)
        view = self.node.view
        quota = view.quotas.get(tenant) or mesh_pb2.TenantQuota(tenant=tenant)
        used = tenant_used(view, self.dataplane.router.limiter, tenant, time.monotonic())
        usage = [mesh_pb2.QuotaUsage(quota=name, used=used.get(name, 0.0), limit=float(getattr(quota, name)),
                                     exact=exact) for name, exact in QUOTAS.items()]
        return mesh_pb2.TenantUsage(tenant=tenant, quota=quota, usage=usage)
