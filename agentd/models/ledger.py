"""Budget stores: where tenant and run budgets live, and the atomic reserve/settle around the pure arithmetic.

Two stores with one interface:

- :class:`MemoryLedger` — this agentd only (the default; tests, single-host dev).
- :class:`EtcdLedger` — shared by every agentd of the cluster. Each budget is one
  key, ``/mabeam/<cluster>/budgets/<scope>/<id>``, holding a
  :class:`~agentd.models.budget.BudgetState` as JSON. A reservation is one etcd
  transaction that compares the ``mod_revision`` of every key it touches (the
  tenant's and the run's) and writes them all, so of any number of agentds
  racing for the last of a budget exactly those that fit win; a loser re-reads
  (the failed transaction returns the current values) and tries again. Inside
  one agentd the calls of one budget are serialised by a lock first, so they do
  not fight each other over the revision.

Why etcd rather than the runs store: a reservation must be linearizable across
hosts before any request leaves, which is exactly a compare-and-swap on etcd,
the cluster's only consensus; the runs store is SQLite per host by default and
is not shared between hosts. See docs/models.md.

Limits come from the configuration on every operation (written into the stored
state), so every agentd of a cluster must be configured with the same limits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from agentd.models.budget import Amount, BudgetState, reserve_all, settle
from mabeam import keys
from mabeam.etcd.client import (
    EtcdClient,
    EtcdError,
    KeyValue,
    cmp_create_revision,
    cmp_mod_revision,
    op_get,
    op_put,
)

log = logging.getLogger("agentd.models.ledger")


@dataclass(frozen=True, slots=True)
class Scope:
    """One budget: its kind (``tenant`` or ``run``), id, and limits (None: unlimited)."""

    kind: str
    id: str
    limit_tokens: int | None
    limit_cost_nusd: int | None

    @property
    def unlimited(self) -> bool:
        """Whether the budget limits nothing (then it is not stored at all)."""
        return self.limit_tokens is None and self.limit_cost_nusd is None

    @property
    def path(self) -> str:
        """``kind/id``."""
        return f"{self.kind}/{self.id}"


class Ledger:
    """The interface: reserve all-or-nothing, settle, read."""

    async def reserve(self, scopes: Sequence[Scope], amount: Amount) -> bool:
        """Reserve `amount` in every scope, or in none (False)."""
        raise NotImplementedError

    async def settle(self, scopes: Sequence[Scope], reserved: Amount, actual: Amount) -> None:
        """Release a reservation and charge the actual amount."""
        raise NotImplementedError

    async def read(self, scope: Scope) -> BudgetState:
        """A budget's current state."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release connections."""


class MemoryLedger(Ledger):
    """Budgets in this process (single event loop: every operation is atomic between awaits)."""

    def __init__(self) -> None:
        self.states: dict[str, BudgetState] = {}

    def _state(self, scope: Scope) -> BudgetState:
        return self.states.get(scope.path, BudgetState()).with_limits(scope.limit_tokens, scope.limit_cost_nusd)

    async def reserve(self, scopes: Sequence[Scope], amount: Amount) -> bool:
        """All-or-nothing in memory."""
        limited = [s for s in scopes if not s.unlimited]
        new = reserve_all([self._state(s) for s in limited], amount)
        if new is None:
            return False
        for scope, state in zip(limited, new, strict=True):
            self.states[scope.path] = state
        return True

    async def settle(self, scopes: Sequence[Scope], reserved: Amount, actual: Amount) -> None:
        """Release and charge."""
        for scope in scopes:
            if not scope.unlimited:
                self.states[scope.path] = settle(self._state(scope), reserved, actual)

    async def read(self, scope: Scope) -> BudgetState:
        """The state under the configured limits."""
        return self._state(scope)


class EtcdLedger(Ledger):
    """Budgets in etcd, changed only by compare-and-swap transactions."""

    def __init__(self, endpoints: Sequence[str], cluster: str, settle_attempts: int = 50, timeout: float = 5.0) -> None:
        self.client = EtcdClient(endpoints, timeout=timeout)
        self.cluster = cluster
        self.settle_attempts = settle_attempts
        self._locks: dict[str, asyncio.Lock] = {}
        self.conflicts = 0

    def key(self, scope: Scope) -> bytes:
        """The etcd key of a budget."""
        return keys.budget(self.cluster, scope.kind, scope.id)

    def _lock(self, scopes: Sequence[Scope]) -> asyncio.Lock:
        name = "|".join(sorted(s.path for s in scopes))
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    @staticmethod
    def _parse(kv: KeyValue | None, scope: Scope) -> BudgetState:
        if kv is None:
            return BudgetState(scope.limit_tokens, scope.limit_cost_nusd)
        try:
            state = BudgetState.from_json(kv.value)
        except ValueError:
            # A corrupt budget must not be spendable: treat it as exhausted and say so.
            log.error("budget %s in etcd does not parse; refusing reservations against it", scope.path)
            return BudgetState(0, 0, 0, 0, 0, 0)
        return state.with_limits(scope.limit_tokens, scope.limit_cost_nusd)

    async def _read_all(self, scopes: Sequence[Scope]) -> list[KeyValue | None]:
        return [await self.client.get(self.key(s)) for s in scopes]

    async def _swap(self, scopes: Sequence[Scope], current: list[KeyValue | None],
                    new: list[BudgetState]) -> tuple[bool, list[KeyValue | None]]:
        compares = [cmp_create_revision(self.key(s), 0) if kv is None else cmp_mod_revision(self.key(s), kv.mod_revision)
                    for s, kv in zip(scopes, current, strict=True)]
        puts = [op_put(self.key(s), state.to_json()) for s, state in zip(scopes, new, strict=True)]
        result = await self.client.txn(compares, puts, [op_get(self.key(s)) for s in scopes])
        if result.succeeded:
            return True, current
        self.conflicts += 1
        return False, [r[0] if r else None for r in result.ranges]

    async def reserve(self, scopes: Sequence[Scope], amount: Amount) -> bool:
        """Compare-and-swap until the reservation fits (True) or does not (False)."""
        limited = [s for s in scopes if not s.unlimited]
        if not limited:
            return True
        async with self._lock(limited):
            current = await self._read_all(limited)
            while True:
                new = reserve_all([self._parse(kv, s) for s, kv in zip(limited, current, strict=True)], amount)
                if new is None:
                    return False
                ok, current = await self._swap(limited, current, new)
                if ok:
                    return True

    async def settle(self, scopes: Sequence[Scope], reserved: Amount, actual: Amount) -> None:
        """Compare-and-swap the settlement; on an etcd outage retry for a while, then leave it reserved."""
        limited = [s for s in scopes if not s.unlimited]
        if not limited:
            return
        delay = 0.05
        for _ in range(self.settle_attempts):
            try:
                async with self._lock(limited):
                    current = await self._read_all(limited)
                    while True:
                        new = [settle(self._parse(kv, s), reserved, actual)
                               for s, kv in zip(limited, current, strict=True)]
                        ok, current = await self._swap(limited, current, new)
                        if ok:
                            return
            except EtcdError as error:
                log.warning("settling budgets %s failed (%s); retrying", [s.path for s in limited], error)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
        # Never lost silently: the reservation stays held (the budget errs on the safe side).
        log.error("could not settle budgets %s; the reservation stays held", [s.path for s in limited])

    async def read(self, scope: Scope) -> BudgetState:
        """The stored state under the configured limits."""
        return self._parse(await self.client.get(self.key(scope)), scope)

    async def close(self) -> None:
        """Close the etcd channel."""
        await self.client.close()
