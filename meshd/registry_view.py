"""The data plane's view of the registry, backed by this meshd's watch-fed cache and its etcd writes.

Reads (``lookup``, ``group_members``) are dictionary lookups in the
:class:`~meshd.view.ClusterView` — a send never waits on etcd. Writes go
through :class:`~meshd.node.MeshNode`, so names and groups registered by
attached endpoints live under this node's lease like any other; their
:class:`~mabeam.errors.ServiceError` becomes the data plane's typed error.
"""

from __future__ import annotations

from mabeam.dataplane.errors import DataPlaneError, InvalidArgument
from mabeam.dataplane.message import AgentRef, tenant_or_default
from mabeam.errors import FieldViolation, ServiceError
from meshd.node import MeshNode
from meshd.validation import check_agent_id, check_name


def _as_dataplane(error: ServiceError) -> DataPlaneError:
    return DataPlaneError(error.message, code=error.code, reason=error.reason)


def _validate(field: str, name: str, agent: AgentRef, node_id: str) -> None:
    violations: list[FieldViolation] = []
    check_name(field, name, violations)
    check_agent_id("agent_id", agent.agent_id, violations)
    if agent.node_id and agent.node_id != node_id:
        violations.append(FieldViolation("node_id", f"{agent.node_id!r} is not this node ({node_id!r})"))
    if violations:
        raise InvalidArgument("; ".join(f"{v.field}: {v.description}" for v in violations))


class NodeRegistryView:
    """:class:`meshd.dataplane.registry.RegistryView` over a :class:`MeshNode`."""

    def __init__(self, node: MeshNode) -> None:
        self.node = node

    def lookup(self, tenant: str, name: str) -> AgentRef | None:
        """The endpoint a name points to, from the cache."""
        entry = self.node.view.names.get((tenant_or_default(tenant), name))
        if entry is None:
            return None
        return AgentRef(entry.target.tenant or tenant_or_default(tenant), entry.target.node_id, entry.target.agent_id)

    def group_members(self, tenant: str, group: str) -> list[AgentRef]:
        """Members of a group across the cluster, from the cache."""
        tenant = tenant_or_default(tenant)
        return [AgentRef(m.member.tenant or tenant, m.member.node_id, m.member.agent_id)
                for m in self.node.view.group_members(tenant, group)]

    async def register_name(self, tenant: str, name: str, agent: AgentRef) -> None:
        """Register a name for an endpoint attached to this node (one etcd transaction)."""
        _validate("name", name, agent, self.node.node_id)
        try:
            await self.node.register_name(tenant_or_default(tenant), name, agent.agent_id, {})
        except ServiceError as error:
            raise _as_dataplane(error) from None

    async def unregister_name(self, tenant: str, name: str, agent: AgentRef) -> None:
        """Remove a name the endpoint owns; no error when it is already gone."""
        tenant = tenant_or_default(tenant)
        # This node's own record first: right after a registration (or one cut short by a cancellation
        # after etcd committed it) the watch-fed view may not show the name yet.
        entry = self.node.owned_name(tenant, name) or self.node.view.names.get((tenant, name))
        if entry is None or entry.target.agent_id != agent.agent_id or entry.target.node_id != self.node.node_id:
            return
        try:
            await self.node.unregister_name(tenant, name)
        except ServiceError as error:
            if error.reason != "NOT_REGISTERED":
                raise _as_dataplane(error) from None

    async def join_group(self, tenant: str, group: str, agent: AgentRef) -> None:
        """Add an attached endpoint to a group (idempotent)."""
        _validate("group", group, agent, self.node.node_id)
        try:
            await self.node.join_group(tenant_or_default(tenant), group, agent.agent_id, {})
        except ServiceError as error:
            raise _as_dataplane(error) from None

    async def leave_group(self, tenant: str, group: str, agent: AgentRef) -> None:
        """Remove an attached endpoint from a group; no error when it was not a member."""
        try:
            await self.node.leave_group(tenant_or_default(tenant), group, agent.agent_id)
        except ServiceError as error:
            raise _as_dataplane(error) from None
