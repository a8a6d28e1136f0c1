"""The durable-write model as a pure core: atomic write groups packed into bounded transactions.

The coordinator turns every accepted change into a *write group*: a mapping
of etcd keys to new values (``None`` deletes) that must be applied atomically
(an event with its idempotency key and the escrow it moved; an agent's hold
with its account). Groups are committed strictly in the order they were
staged. :func:`pack` packs consecutive groups into as few transactions as
etcd's per-transaction operation limit allows, without ever splitting a
group, and coalesces writes to the same key (the later value wins, which is
right because groups are applied in order and each value is absolute).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

#: etcd's default --max-txn-ops is 128; leave room for the fence compare.
MAX_TXN_OPS = 120

WriteGroup = Mapping[bytes, bytes | None]


class GroupTooLarge(ValueError):
    """A single write group has more operations than one transaction may carry."""


def pack(groups: Iterable[WriteGroup], max_ops: int = MAX_TXN_OPS) -> list[dict[bytes, bytes | None]]:
    """Consecutive groups merged into transactions of at most ``max_ops`` distinct keys, in order."""
    batches: list[dict[bytes, bytes | None]] = []
    current: dict[bytes, bytes | None] = {}
    for group in groups:
        if len(group) > max_ops:
            raise GroupTooLarge(f"a write group of {len(group)} keys exceeds {max_ops} operations")
        added = sum(1 for key in group if key not in current)
        if current and len(current) + added > max_ops:
            batches.append(current)
            current = {}
        current.update(group)
    if current:
        batches.append(current)
    return batches


def take_fitting(groups: list[WriteGroup], max_ops: int = MAX_TXN_OPS) -> int:
    """How many leading groups fit together into one transaction (at least one)."""
    keys: set[bytes] = set()
    for index, group in enumerate(groups):
        new = keys | set(group)
        if index and len(new) > max_ops:
            return index
        keys = new
    return len(groups)
