"""The cluster as one meshd sees it: a pure state machine fed by etcd.

``ClusterView`` holds the members, tenants, names, groups and election
candidates of one cluster. It is built from a full read (:meth:`reload`) and
kept current by watch batches (:meth:`apply`); both return the changes that
watchers care about (members joining, updating and leaving; leaders changing).
No I/O: the daemon reads etcd and feeds it, the tests feed it by hand.

A value that does not parse (someone wrote junk under our prefix) is skipped
and counted in ``bad_values``, never fatal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from mabeam import keys
from mabeam.etcd.client import KeyValue, WatchBatch
from mabeam.etcd.election import leader_of
from mabeam.v1 import common_pb2, mesh_pb2


@dataclass(frozen=True, slots=True)
class MemberChange:
    """A member joined, was updated, or left."""

    type: int  # mesh_pb2.MemberEvent.Type
    node: common_pb2.NodeInfo
    revision: int


@dataclass(frozen=True, slots=True)
class LeaderChange:
    """The leader of a role changed (``leader.node_id`` is empty when the role has none)."""

    leader: mesh_pb2.LeaderInfo
    revision: int


Change = MemberChange | LeaderChange

GroupKey = tuple[str, str]  # (tenant, group)
MemberKey = tuple[str, str]  # (node_id, agent_id)


@dataclass
class ClusterView:
    """Members, tenants, names, groups and leaders of one cluster, at ``revision``."""

    cluster: str
    members: dict[str, common_pb2.NodeInfo] = field(default_factory=dict)
    tenants: dict[str, common_pb2.Tenant] = field(default_factory=dict)
    names: dict[tuple[str, str], mesh_pb2.NameEntry] = field(default_factory=dict)
    groups: dict[GroupKey, dict[MemberKey, mesh_pb2.GroupMember]] = field(default_factory=dict)
    candidates: dict[str, dict[bytes, KeyValue]] = field(default_factory=dict)
    #: Tenants' quotas (``quotas/<tenant>``) and the holders of their exactly counted resources
    #: (``usage/<tenant>/<resource>/<holder>``): what GetTenantUsage answers from.
    quotas: dict[str, mesh_pb2.TenantQuota] = field(default_factory=dict)
    holders: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    #: Tenants' model spend, (tokens, cost in nano-USD) spent + reserved, from their model budgets in etcd
    #: (``budgets/tenant/<tenant>``, agentd's shared ledger): the use of model_max_tokens / model_max_cost_nusd.
    model_spend: dict[str, tuple[float, float]] = field(default_factory=dict)
    revision: int = 0
    bad_values: int = 0

    # --- queries (what lookups are served from) ---

    def leader(self, role: str) -> mesh_pb2.LeaderInfo:
        """The current leader of `role` (node_id empty when none)."""
        best = leader_of(self.candidates.get(role, {}).values())
        if best is None:
            return mesh_pb2.LeaderInfo(role=role)
        info = mesh_pb2.LeaderInfo()
        try:
            info.ParseFromString(best.value)
        except DecodeError:
            info = mesh_pb2.LeaderInfo()
        info.role = role
        info.term = best.create_revision
        return info

    def group_members(self, tenant: str, group: str) -> list[mesh_pb2.GroupMember]:
        """Members of a group, ordered by (node, agent) so round-robin over them is stable."""
        members = self.groups.get((tenant, group), {})
        return [members[k] for k in sorted(members)]

    # --- feeding ---

    def reload(self, kvs: Iterable[KeyValue], revision: int) -> list[Change]:
        """Replace the view with a full read at `revision`; returns what changed versus before."""
        fresh = ClusterView(self.cluster)
        for kv in kvs:
            fresh._put(kv)
        fresh.revision = revision
        changes: list[Change] = []
        for node_id, node in fresh.members.items():
            old = self.members.get(node_id)
            if old is None:
                changes.append(MemberChange(mesh_pb2.MemberEvent.JOINED, node, revision))
            elif old != node:
                changes.append(MemberChange(mesh_pb2.MemberEvent.UPDATED, node, revision))
        for node_id, node in self.members.items():
            if node_id not in fresh.members:
                changes.append(MemberChange(mesh_pb2.MemberEvent.LEFT, node, revision))
        for role in set(self.candidates) | set(fresh.candidates):
            before, after = self.leader(role), fresh.leader(role)
            if (before.node_id, before.term) != (after.node_id, after.term):
                changes.append(LeaderChange(after, revision))
        self.members, self.tenants, self.names = fresh.members, fresh.tenants, fresh.names
        self.groups, self.candidates, self.revision = fresh.groups, fresh.candidates, revision
        self.quotas, self.holders, self.model_spend = fresh.quotas, fresh.holders, fresh.model_spend
        self.bad_values += fresh.bad_values
        return changes

    def apply(self, batch: WatchBatch) -> list[Change]:
        """Apply one watch batch; returns member and leader changes in event order."""
        changes: list[Change] = []
        roles_before: dict[str, mesh_pb2.LeaderInfo] = {}
        for event in batch.events:
            parts = keys.split(self.cluster, event.kv.key)
            if parts and parts[0] == "election" and len(parts) == 3 and parts[1] not in roles_before:
                roles_before[parts[1]] = self.leader(parts[1])
            if event.kind == "put":
                existed = parts is not None and parts[0] == "members" and len(parts) == 2 and parts[1] in self.members
                node = self._put(event.kv)
                if node is not None:
                    kind = mesh_pb2.MemberEvent.UPDATED if existed else mesh_pb2.MemberEvent.JOINED
                    changes.append(MemberChange(kind, node, event.kv.mod_revision))
            else:
                node = self._delete(event.kv.key)
                if node is not None:
                    changes.append(MemberChange(mesh_pb2.MemberEvent.LEFT, node, event.kv.mod_revision))
        for role, before in roles_before.items():
            after = self.leader(role)
            if (before.node_id, before.term) != (after.node_id, after.term):
                changes.append(LeaderChange(after, batch.revision))
        self.revision = max(self.revision, batch.revision)
        return changes

    def _parse(self, message: object, value: bytes) -> bool:
        try:
            message.ParseFromString(value)  # type: ignore[attr-defined]
            return True
        except DecodeError:
            self.bad_values += 1
            return False

    def _put(self, kv: KeyValue) -> common_pb2.NodeInfo | None:
        """Store one key; returns the NodeInfo when it was a member key."""
        parts = keys.split(self.cluster, kv.key)
        if not parts:
            return None
        kind = parts[0]
        if kind == "members" and len(parts) == 2:
            node = common_pb2.NodeInfo()
            if self._parse(node, kv.value):
                self.members[parts[1]] = node
                return node
        elif kind == "tenants" and len(parts) == 2:
            tenant = common_pb2.Tenant()
            if self._parse(tenant, kv.value):
                self.tenants[parts[1]] = tenant
        elif kind == "names" and len(parts) == 3:
            entry = mesh_pb2.NameEntry()
            if self._parse(entry, kv.value):
                entry.revision = kv.create_revision
                self.names[(parts[1], parts[2])] = entry
        elif kind == "groups" and len(parts) == 5:
            member = mesh_pb2.GroupMember()
            if self._parse(member, kv.value):
                self.groups.setdefault((parts[1], parts[2]), {})[(parts[3], parts[4])] = member
        elif kind == "election" and len(parts) == 3:
            self.candidates.setdefault(parts[1], {})[kv.key] = kv
        elif kind == "quotas" and len(parts) == 2:
            quota = mesh_pb2.TenantQuota()
            if self._parse(quota, kv.value):
                self.quotas[parts[1]] = quota
        elif kind == "usage" and len(parts) == 4:
            self.holders.setdefault((parts[1], parts[2]), set()).add(parts[3])
        elif kind == "budgets" and len(parts) == 3 and parts[1] == "tenant":
            spend = _spend(kv.value)
            if spend is None:
                self.bad_values += 1
            else:
                self.model_spend[parts[2]] = spend
        return None

    def _delete(self, key: bytes) -> common_pb2.NodeInfo | None:
        """Forget one key; returns the NodeInfo when a member left."""
        parts = keys.split(self.cluster, key)
        if not parts:
            return None
        kind = parts[0]
        if kind == "members" and len(parts) == 2:
            return self.members.pop(parts[1], None)
        if kind == "tenants" and len(parts) == 2:
            self.tenants.pop(parts[1], None)
        elif kind == "names" and len(parts) == 3:
            self.names.pop((parts[1], parts[2]), None)
        elif kind == "groups" and len(parts) == 5:
            group = self.groups.get((parts[1], parts[2]))
            if group is not None:
                group.pop((parts[3], parts[4]), None)
                if not group:
                    del self.groups[(parts[1], parts[2])]
        elif kind == "election" and len(parts) == 3:
            role = self.candidates.get(parts[1])
            if role is not None:
                role.pop(key, None)
                if not role:
                    del self.candidates[parts[1]]
        elif kind == "quotas" and len(parts) == 2:
            self.quotas.pop(parts[1], None)
        elif kind == "budgets" and len(parts) == 3 and parts[1] == "tenant":
            self.model_spend.pop(parts[2], None)
        elif kind == "usage" and len(parts) == 4:
            held = self.holders.get((parts[1], parts[2]))
            if held is not None:
                held.discard(parts[3])
                if not held:
                    del self.holders[(parts[1], parts[2])]
        return None


def _spend(value: bytes) -> tuple[float, float] | None:
    """(tokens, nano-USD) spent + reserved of a stored model budget (JSON), or None when it is not one."""
    try:
        state = json.loads(value)
        return (float(state.get("spent_tokens", 0)) + float(state.get("reserved_tokens", 0)),
                float(state.get("spent_cost_nusd", 0)) + float(state.get("reserved_cost_nusd", 0)))
    except (ValueError, TypeError, AttributeError):
        return None
