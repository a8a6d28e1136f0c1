"""The credit ledger as a pure core: balances per (tenant, agent), escrow holds per instance.

An account has ``available`` credit and ``held`` credit (the sum of its escrow
holds). Every operation checks everything first and then mutates, so a raised
:class:`InsufficientFunds` leaves the ledger unchanged. The coordinator is the
only writer (one fenced leader), applies operations one at a time on its event
loop and persists the changed keys (``take_dirty``) in the same etcd
transaction as the event that caused them: concurrent spends are serialised
here and can never overdraw.

Invariants (checked by ``tests/unit/coordinator/test_ledger.py``):
``available >= 0``; ``held == sum of the account's holds``; deposits minus
burned payments equal the total of all balances.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

MAX_BALANCE = 10**15


class LedgerError(Exception):
    """A ledger operation was refused; nothing changed."""


class InsufficientFunds(LedgerError):
    """The account's available credit does not cover the amount."""


@dataclass(slots=True)
class Account:
    """One agent's credit: spendable and held in escrow."""

    available: int = 0
    held: int = 0

    def to_json(self) -> bytes:
        """The stored form."""
        return json.dumps({"available": self.available, "held": self.held}).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Account:
        """Parse the stored form."""
        data = json.loads(raw)
        return cls(int(data["available"]), int(data["held"]))


AccountKey = tuple[str, str]  # (tenant, agent)
HoldKey = tuple[str, str, str]  # (instance id, tenant, agent)


class Ledger:
    """All accounts and holds in memory, with the set of keys changed since the last ``take_dirty``."""

    def __init__(self) -> None:
        self.accounts: dict[AccountKey, Account] = {}
        self.holds: dict[HoldKey, int] = {}
        self._dirty_accounts: set[AccountKey] = set()
        self._dirty_holds: set[HoldKey] = set()

    # -- reading ----------------------------------------------------------

    def balance(self, tenant: str, agent: str) -> Account:
        """A copy of the account (zero when it never existed)."""
        account = self.accounts.get((tenant, agent), Account())
        return Account(account.available, account.held)

    def hold_of(self, instance_id: str, tenant: str, agent: str) -> int:
        """What ``agent`` holds in escrow for ``instance_id``."""
        return self.holds.get((instance_id, tenant, agent), 0)

    def holds_for(self, instance_id: str) -> dict[tuple[str, str], int]:
        """Every hold of one instance, by (tenant, agent)."""
        return {(t, a): amount for (i, t, a), amount in self.holds.items() if i == instance_id}

    def total(self) -> int:
        """All credit in all accounts (available plus held)."""
        return sum(a.available + a.held for a in self.accounts.values())

    # -- checks (no mutation) ----------------------------------------------

    def check_hold(self, instance_id: str, tenant: str, agent: str, amount: int) -> None:
        """Raise InsufficientFunds unless the hold can be raised (or kept) at ``amount``."""
        if amount < 0:
            raise LedgerError(f"hold amount must be >= 0, got {amount}")
        delta = amount - self.hold_of(instance_id, tenant, agent)
        available = self.accounts.get((tenant, agent), Account()).available
        if delta > available:
            raise InsufficientFunds(f"{tenant}/{agent} has {available} available; holding {amount} for "
                                    f"{instance_id} needs {delta} more")

    # -- operations --------------------------------------------------------

    def deposit(self, tenant: str, agent: str, amount: int) -> Account:
        """Credit ``amount`` (> 0) to an account."""
        account = self.accounts.get((tenant, agent), Account())
        if amount <= 0:
            raise LedgerError(f"deposit must be positive, got {amount}")
        if account.available + account.held + amount > MAX_BALANCE:
            raise LedgerError(f"balance would exceed {MAX_BALANCE}")
        account.available += amount
        self._touch(tenant, agent, account)
        return self.balance(tenant, agent)

    def transfer(self, tenant: str, source: str, target: str, amount: int) -> tuple[Account, Account]:
        """Move ``amount`` of available credit from ``source`` to ``target``."""
        if amount <= 0:
            raise LedgerError(f"transfer must be positive, got {amount}")
        if source == target:
            raise LedgerError("cannot transfer to the same account")
        src = self.accounts.get((tenant, source), Account())
        if src.available < amount:
            raise InsufficientFunds(f"{tenant}/{source} has {src.available} available, transfer needs {amount}")
        dst = self.accounts.get((tenant, target), Account())
        if dst.available + dst.held + amount > MAX_BALANCE:
            raise LedgerError(f"balance would exceed {MAX_BALANCE}")
        src.available -= amount
        dst.available += amount
        self._touch(tenant, source, src)
        self._touch(tenant, target, dst)
        return self.balance(tenant, source), self.balance(tenant, target)

    def set_hold(self, instance_id: str, tenant: str, agent: str, amount: int) -> None:
        """Raise or lower an agent's escrow for an instance to ``amount`` (0 releases it)."""
        self.check_hold(instance_id, tenant, agent, amount)
        key = (instance_id, tenant, agent)
        delta = amount - self.holds.get(key, 0)
        account = self.accounts.get((tenant, agent), Account())
        account.available -= delta
        account.held += delta
        if amount:
            self.holds[key] = amount
        else:
            self.holds.pop(key, None)
        self._dirty_holds.add(key)
        self._touch(tenant, agent, account)

    def release(self, instance_id: str, tenant: str, agent: str) -> None:
        """Return an agent's whole hold for an instance to its available credit."""
        if (instance_id, tenant, agent) in self.holds:
            self.set_hold(instance_id, tenant, agent, 0)

    def settle(self, instance_id: str, tenant: str, payer: str, price: int, payee: str | None) -> None:
        """Pay ``price`` out of the payer's hold (the rest returns to them); credit ``payee`` if given."""
        held = self.hold_of(instance_id, tenant, payer)
        if price < 0 or price > held:
            raise InsufficientFunds(f"{tenant}/{payer} holds {held} for {instance_id}, cannot pay {price}")
        self.set_hold(instance_id, tenant, payer, 0)
        account = self.accounts[(tenant, payer)]
        account.available -= price
        self._touch(tenant, payer, account)
        if payee is not None and price:
            target = self.accounts.get((tenant, payee), Account())
            target.available += price
            self._touch(tenant, payee, target)

    def pay_from_hold(self, instance_id: str, tenant: str, payer: str, hold_used: int, price: int,
                      payee: str | None) -> None:
        """Consume ``hold_used`` of a hold, paying ``price`` (≤ hold_used) and returning the difference."""
        held = self.hold_of(instance_id, tenant, payer)
        if not 0 <= price <= hold_used <= held:
            raise InsufficientFunds(f"{tenant}/{payer} holds {held} for {instance_id}; cannot use {hold_used} "
                                    f"to pay {price}")
        self.set_hold(instance_id, tenant, payer, held - hold_used)
        account = self.accounts[(tenant, payer)]
        account.available -= price
        self._touch(tenant, payer, account)
        if payee is not None and price:
            target = self.accounts.get((tenant, payee), Account())
            target.available += price
            self._touch(tenant, payee, target)

    def release_all(self, instance_id: str) -> None:
        """Release every hold of an instance (cancellation, losing bids)."""
        for (tenant, agent) in list(self.holds_for(instance_id)):
            self.release(instance_id, tenant, agent)

    # -- persistence -----------------------------------------------------------

    def _touch(self, tenant: str, agent: str, account: Account) -> None:
        self.accounts[(tenant, agent)] = account
        self._dirty_accounts.add((tenant, agent))

    def take_dirty(self) -> tuple[dict[AccountKey, Account], dict[HoldKey, int]]:
        """The accounts and holds changed since the last call (a hold of 0 means deleted)."""
        accounts = {key: self.balance(*key) for key in self._dirty_accounts}
        holds = {key: self.holds.get(key, 0) for key in self._dirty_holds}
        self._dirty_accounts.clear()
        self._dirty_holds.clear()
        return accounts, holds

    def snapshot(self) -> tuple[dict[AccountKey, Account], dict[HoldKey, int]]:
        """Copies of all accounts and holds (to roll back a refused multi-step operation)."""
        return ({k: Account(v.available, v.held) for k, v in self.accounts.items()}, dict(self.holds))

    def restore(self, snapshot: tuple[dict[AccountKey, Account], dict[HoldKey, int]]) -> None:
        """Go back to a snapshot, marking every difference dirty."""
        accounts, holds = snapshot
        for key in set(self.accounts) | set(accounts):
            self._dirty_accounts.add(key)
        for hold in set(self.holds) | set(holds):
            self._dirty_holds.add(hold)
        self.accounts = {k: Account(v.available, v.held) for k, v in accounts.items()}
        self.holds = dict(holds)
