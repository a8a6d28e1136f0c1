"""What the data plane needs from the name/group registry, and an in-memory implementation.

meshd backs :class:`RegistryView` with its etcd-watch-fed registry cache
(lookups are synchronous cache reads, so a send does no etcd round trip) and
with etcd writes under the node lease for the async mutations used by local
attach. :class:`InMemoryRegistry` implements the protocol for tests, benches and
single-process use; several data planes in one process may share one instance
to stand in for a consistent cluster-wide cache.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from mabeam.dataplane.message import DEFAULT_TENANT, AgentRef, tenant_or_default


@runtime_checkable
class RegistryView(Protocol):
    """The registry as the data plane uses it.

    ``lookup`` and ``group_members`` are synchronous reads of a local cache and
    must not block. The async mutations are called for endpoints attached to
    this node; implementations raise ``mabeam_dataplane.errors.DataPlaneError``
    (or any exception, reported to the attached process as INTERNAL) on failure,
    e.g. ``DataPlaneError(code=ALREADY_EXISTS)`` for a taken name.
    """

    def lookup(self, tenant: str, name: str) -> AgentRef | None:
        """The endpoint a name points to, or None."""
        ...

    def group_members(self, tenant: str, group: str) -> list[AgentRef]:
        """The members of a group across the cluster (any order; the data plane sorts)."""
        ...

    async def register_name(self, tenant: str, name: str, agent: AgentRef) -> None:
        """Register a cluster-unique name for a local endpoint."""
        ...

    async def unregister_name(self, tenant: str, name: str, agent: AgentRef) -> None:
        """Remove a name the endpoint owns (no error when absent)."""
        ...

    async def join_group(self, tenant: str, group: str, agent: AgentRef) -> None:
        """Add a local endpoint to a group (idempotent)."""
        ...

    async def leave_group(self, tenant: str, group: str, agent: AgentRef) -> None:
        """Remove a local endpoint from a group (no error when absent)."""
        ...


class InMemoryRegistry:
    """A dict-backed :class:`RegistryView`: names are unique per tenant, groups are sets."""

    def __init__(self) -> None:
        self.names: dict[tuple[str, str], AgentRef] = {}
        self.groups: dict[tuple[str, str], set[AgentRef]] = {}

    def lookup(self, tenant: str, name: str) -> AgentRef | None:
        """The endpoint a name points to, or None."""
        return self.names.get((tenant_or_default(tenant), name))

    def group_members(self, tenant: str, group: str) -> list[AgentRef]:
        """The members of a group."""
        return list(self.groups.get((tenant_or_default(tenant), group), ()))

    def set_name(self, tenant: str, name: str, agent: AgentRef) -> None:
        """Synchronous registration (static setups in tests and benches); replaces an existing entry."""
        self.names[(tenant_or_default(tenant), name)] = agent

    async def register_name(self, tenant: str, name: str, agent: AgentRef) -> None:
        """Register a name; ALREADY_EXISTS when another endpoint owns it."""
        from mabeam.dataplane.errors import DataPlaneError

        key = (tenant_or_default(tenant), name)
        current = self.names.get(key)
        if current is not None and current != agent:
            import grpc

            raise DataPlaneError(f"name {name!r} is taken", grpc.StatusCode.ALREADY_EXISTS)
        self.names[key] = agent

    async def unregister_name(self, tenant: str, name: str, agent: AgentRef) -> None:
        """Remove a name the endpoint owns."""
        key = (tenant_or_default(tenant), name)
        if self.names.get(key) == agent:
            del self.names[key]

    async def join_group(self, tenant: str, group: str, agent: AgentRef) -> None:
        """Add to a group."""
        self.groups.setdefault((tenant_or_default(tenant), group), set()).add(agent)

    async def leave_group(self, tenant: str, group: str, agent: AgentRef) -> None:
        """Remove from a group."""
        members = self.groups.get((tenant_or_default(tenant), group))
        if members is not None:
            members.discard(agent)

    def drop_node(self, node_id: str) -> None:
        """Forget every entry of a node (what the etcd lease expiry does in meshd)."""
        self.names = {k: v for k, v in self.names.items() if v.node_id != node_id}
        for members in self.groups.values():
            for ref in [m for m in members if m.node_id == node_id]:
                members.discard(ref)


__all__ = ["DEFAULT_TENANT", "AgentRef", "InMemoryRegistry", "RegistryView", "tenant_or_default"]
