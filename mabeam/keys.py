"""The etcd key layout, in one place (documented in docs/architecture.md).

Everything of one cluster lives under ``/mabeam/<cluster>/``:

- ``members/<node_id>`` → NodeInfo, under the node's lease
- ``tenants/<tenant>`` → Tenant (no lease: tenants outlive nodes)
- ``names/<tenant>/<name>`` → NameEntry, under the owning node's lease
- ``groups/<tenant>/<group>/<node_id>/<agent_id>`` → GroupMember, under the owning node's lease
- ``election/<role>/<lease id, 16 hex digits>`` → LeaderInfo of a candidate, under its lease
- ``runs/executors/<run_id>`` → JSON {node_id, agent_type, lease_id} of a run's executor, under the
  run's own lease (its create revision is the executor's fencing token)
- ``security/token_keys/<kid>`` → an Ed25519 public key (PEM) that verifies bearer tokens (no lease)
- ``quotas/<tenant>`` → TenantQuota (protobuf, no lease): the tenant's limits, set by SetTenantQuota
- ``usage/<tenant>/<resource>/<holder>`` → one held unit of an exactly counted quota (an agent, a run),
  under its holder's lease; ``usage/<tenant>/<resource>`` (no trailing part) is the resource's
  version key, bumped by every acquisition (mabeam/security/quota.py)
- ``runs/wake/<node_id>`` → JSON {run_id: seq} of the runs a node appended to last (SQLite stores:
  how other nodes' followers learn of new events)
- ``runs/assign/<node_id>/<run_id>`` → JSON {janitor} : the janitor asks that node's agentd to resume
  the run (under the janitor's lease; the agentd deletes it once it acted)

Identifiers never contain ``/`` (validation enforces it), so splitting a key
on ``/`` is unambiguous.
"""

from __future__ import annotations


def root(cluster: str) -> bytes:
    """The prefix of every key of `cluster`."""
    return f"/mabeam/{cluster}/".encode()


def member(cluster: str, node_id: str) -> bytes:
    """A node's membership key."""
    return root(cluster) + f"members/{node_id}".encode()


def tenant(cluster: str, tenant_id: str) -> bytes:
    """A tenant's definition key."""
    return root(cluster) + f"tenants/{tenant_id}".encode()


def name(cluster: str, tenant_id: str, name_: str) -> bytes:
    """A registered name's key."""
    return root(cluster) + f"names/{tenant_id}/{name_}".encode()


def group_member(cluster: str, tenant_id: str, group: str, node_id: str, agent_id: str) -> bytes:
    """One agent's membership in a group."""
    return root(cluster) + f"groups/{tenant_id}/{group}/{node_id}/{agent_id}".encode()


def election(cluster: str, role: str) -> bytes:
    """The prefix under which candidates for `role` put their keys."""
    return root(cluster) + f"election/{role}/".encode()


def run_executors(cluster: str) -> bytes:
    """The prefix of every run's executor key."""
    return root(cluster) + b"runs/executors/"


def run_executor(cluster: str, run_id: str) -> bytes:
    """The key a run's executor holds under the run's lease."""
    return run_executors(cluster) + run_id.encode()


def run_assignments(cluster: str, node_id: str) -> bytes:
    """The prefix of the runs the janitor asked ``node_id``'s agentd to resume."""
    return root(cluster) + f"runs/assign/{node_id}/".encode()


def run_assignment(cluster: str, node_id: str, run_id: str) -> bytes:
    """One such request."""
    return run_assignments(cluster, node_id) + run_id.encode()


def run_wakes(cluster: str) -> bytes:
    """The prefix of the nodes' wake-up keys for run followers."""
    return root(cluster) + b"runs/wake/"


def run_wake(cluster: str, node_id: str) -> bytes:
    """One node's wake-up key."""
    return run_wakes(cluster) + node_id.encode()


def budget(cluster: str, kind: str, budget_id: str) -> bytes:
    """A model budget: ``budgets/<tenant|run>/<id>`` (agentd's model ledger; JSON, no lease)."""
    return root(cluster) + f"budgets/{kind}/{budget_id}".encode()


def token_keys(cluster: str) -> bytes:
    """The prefix of the public keys that verify the cluster's bearer tokens."""
    return root(cluster) + b"security/token_keys/"


def token_key(cluster: str, kid: str) -> bytes:
    """One token verification key."""
    return token_keys(cluster) + kid.encode()


def quotas(cluster: str) -> bytes:
    """The prefix of every tenant's quota."""
    return root(cluster) + b"quotas/"


def quota(cluster: str, tenant_id: str) -> bytes:
    """A tenant's quota (TenantQuota)."""
    return quotas(cluster) + tenant_id.encode()


def usage_version(cluster: str, tenant_id: str, resource: str) -> bytes:
    """The key every acquisition of a counted resource bumps (its mod revision orders them)."""
    return root(cluster) + f"usage/{tenant_id}/{resource}".encode()


def usage_holders(cluster: str, tenant_id: str, resource: str) -> bytes:
    """The prefix of the units of a counted resource a tenant holds."""
    return usage_version(cluster, tenant_id, resource) + b"/"


def usage_holder(cluster: str, tenant_id: str, resource: str, holder: str) -> bytes:
    """One held unit (an agent, a run) of a counted resource."""
    return usage_holders(cluster, tenant_id, resource) + holder.encode()


def split(cluster: str, key: bytes) -> list[str] | None:
    """A key's parts below the cluster root (e.g. ["names", "default", "x"]), or None if outside it."""
    prefix = root(cluster)
    if not key.startswith(prefix):
        return None
    return key[len(prefix):].decode(errors="replace").split("/")
