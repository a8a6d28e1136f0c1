"""The ledger core: holds, settlement and transfers keep every invariant; refusals change nothing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.ledger import InsufficientFunds, Ledger, LedgerError


def _held_matches(ledger: Ledger) -> bool:
    for (tenant, agent), account in ledger.accounts.items():
        total = sum(a for (_, t, g), a in ledger.holds.items() if (t, g) == (tenant, agent))
        if account.held != total or account.available < 0:
            return False
    return True


def test_hold_settle_release() -> None:
    # A winner pays the price out of the hold (the rest returns); a loser gets everything back.
    ledger = Ledger()
    ledger.deposit("t", "a", 100)
    ledger.deposit("t", "b", 100)
    ledger.set_hold("auc", "t", "a", 60)
    ledger.set_hold("auc", "t", "b", 50)
    ledger.settle("auc", "t", "a", 50, "seller")
    ledger.release("auc", "t", "b")
    assert (ledger.balance("t", "a").available, ledger.balance("t", "a").held) == (50, 0)
    assert ledger.balance("t", "b").available == 100
    assert ledger.balance("t", "seller").available == 50
    assert ledger.total() == 200 and _held_matches(ledger)


def test_refusals_change_nothing() -> None:
    # Over-budget holds and transfers raise and leave balances and the dirty set untouched.
    ledger = Ledger()
    ledger.deposit("t", "a", 10)
    ledger.take_dirty()
    with pytest.raises(InsufficientFunds):
        ledger.set_hold("auc", "t", "a", 11)
    with pytest.raises(InsufficientFunds):
        ledger.transfer("t", "a", "b", 11)
    with pytest.raises(LedgerError):
        ledger.deposit("t", "a", 0)
    assert ledger.balance("t", "a").available == 10
    assert ledger.take_dirty() == ({}, {})


@given(st.lists(st.tuples(st.sampled_from(["hold", "transfer", "release", "settle"]),
                          st.sampled_from(["a", "b", "c"]), st.sampled_from(["a", "b", "c"]),
                          st.integers(0, 80)), max_size=60))
def test_random_operations_never_overdraw(ops) -> None:
    # Whatever sequence of operations is attempted, no balance goes negative and held equals the holds.
    ledger = Ledger()
    for agent in "abc":
        ledger.deposit("t", agent, 100)
    for op, x, y, amount in ops:
        try:
            if op == "hold":
                ledger.set_hold("i", "t", x, amount)
            elif op == "transfer":
                ledger.transfer("t", x, y, amount)
            elif op == "release":
                ledger.release("i", "t", x)
            else:
                ledger.settle("i", "t", x, min(amount, ledger.hold_of("i", "t", x)), y if y != x else None)
        except LedgerError:
            pass
        assert _held_matches(ledger)
    assert ledger.total() <= 300
