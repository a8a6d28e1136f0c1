"""The coordinator's etcd key layout, in one place (documented in docs/coordinator.md).

Everything lives under ``/mabeam/<cluster>/coordinator/``:

- ``leader`` → JSON {node_id, address, term} written by each new leader (fenced)
- ``inst/<id>/meta`` → JSON instance metadata (kind, config, tenant, escrow, binding, created_at)
- ``inst/<id>/ev/<seq, 12 digits>`` → JSON {now, event, cid, term}: the accepted-event log
- ``inst/<id>/cid/<client event id>`` → the seq it was accepted at (idempotency)
- ``inst/<id>/end`` → JSON {state, outcome, receipt, hash}: written with the concluding event
- ``acct/<tenant>/<agent>`` → JSON {available, held}
- ``hold/<id>/<tenant>/<agent>`` → the amount held in escrow for that instance
- ``op/<tenant>/<client op id>`` → JSON result of a deposit or transfer (idempotency)
- ``var/<tenant>/<name>`` → JSON current variable record
- ``varh/<tenant>/<name>/<version, 12 digits>`` → JSON variable record (bounded history)

Ids and names never contain ``/`` (validation enforces it).
"""

from __future__ import annotations

from mabeam import keys as mesh_keys

SEQ_DIGITS = 12


def base(cluster: str) -> bytes:
    """The prefix of every coordinator key of ``cluster``."""
    return mesh_keys.root(cluster) + b"coordinator/"


def election(cluster: str) -> bytes:
    """The election prefix of the coordinator role."""
    return mesh_keys.election(cluster, "coordinator")


def leader(cluster: str) -> bytes:
    """The key each new leader writes (fenced) when it takes over."""
    return base(cluster) + b"leader"


def instances(cluster: str) -> bytes:
    """The prefix of every instance key."""
    return base(cluster) + b"inst/"


def instance(cluster: str, instance_id: str) -> bytes:
    """The prefix of one instance's keys."""
    return instances(cluster) + instance_id.encode() + b"/"


def meta(cluster: str, instance_id: str) -> bytes:
    """An instance's metadata key."""
    return instance(cluster, instance_id) + b"meta"


def events(cluster: str, instance_id: str) -> bytes:
    """The prefix of an instance's event log."""
    return instance(cluster, instance_id) + b"ev/"


def event(cluster: str, instance_id: str, seq: int) -> bytes:
    """One event's key (zero-padded so key order is seq order)."""
    return events(cluster, instance_id) + f"{seq:0{SEQ_DIGITS}d}".encode()


def client_event(cluster: str, instance_id: str, client_event_id: str) -> bytes:
    """The idempotency key of a client event id."""
    return instance(cluster, instance_id) + b"cid/" + client_event_id.encode()


def end(cluster: str, instance_id: str) -> bytes:
    """An instance's final state (outcome and receipt, or cancellation)."""
    return instance(cluster, instance_id) + b"end"


def accounts(cluster: str) -> bytes:
    """The prefix of every ledger account."""
    return base(cluster) + b"acct/"


def account(cluster: str, tenant: str, agent: str) -> bytes:
    """One ledger account."""
    return accounts(cluster) + f"{tenant}/{agent}".encode()


def holds(cluster: str) -> bytes:
    """The prefix of every escrow hold."""
    return base(cluster) + b"hold/"


def hold(cluster: str, instance_id: str, tenant: str, agent: str) -> bytes:
    """The escrow one agent holds in one instance."""
    return holds(cluster) + f"{instance_id}/{tenant}/{agent}".encode()


def operation(cluster: str, tenant: str, op_id: str) -> bytes:
    """The idempotency record of a ledger operation."""
    return base(cluster) + f"op/{tenant}/{op_id}".encode()


def variables(cluster: str) -> bytes:
    """The prefix of every variable."""
    return base(cluster) + b"var/"


def variable(cluster: str, tenant: str, name: str) -> bytes:
    """A variable's current record."""
    return variables(cluster) + f"{tenant}/{name}".encode()


def history_prefix(cluster: str, tenant: str, name: str) -> bytes:
    """The prefix of a variable's kept versions."""
    return base(cluster) + f"varh/{tenant}/{name}/".encode()


def history(cluster: str, tenant: str, name: str, version: int) -> bytes:
    """One kept version of a variable."""
    return history_prefix(cluster, tenant, name) + f"{version:0{SEQ_DIGITS}d}".encode()
