"""The durable-write model (packing atomic groups into bounded transactions) and escrow rules per kind."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.batching import GroupTooLarge, pack, take_fitting
from coordinator.escrow import (
    EscrowRefused,
    OrderInfo,
    market_changes,
    participant,
    required_hold,
    settlement,
)
from coordinator.instances import check_sequence

groups_strategy = st.lists(st.dictionaries(st.binary(min_size=1, max_size=2), st.binary(max_size=2), min_size=1,
                                           max_size=8), max_size=40)


@given(groups_strategy)
def test_pack_keeps_groups_whole_in_order_and_bounded(groups) -> None:
    # Applying the packed transactions in order gives the same store as applying the groups one by one.
    batches = pack(groups, max_ops=10)
    assert all(len(b) <= 10 for b in batches)
    expected: dict = {}
    for group in groups:
        expected.update(group)
    got: dict = {}
    for batch in batches:
        got.update(batch)
    assert got == expected
    assert sum(1 for _ in batches) <= len(groups)


def test_oversized_group_is_refused_and_take_fitting() -> None:
    with pytest.raises(GroupTooLarge):
        pack([{bytes([i]): b"" for i in range(11)}], max_ops=10)
    groups = [{b"a": b"", b"b": b""}, {b"c": b""}, {b"d": b"", b"e": b""}]
    assert take_fitting(groups, max_ops=3) == 2
    assert take_fitting(groups, max_ops=100) == 3
    assert take_fitting([{bytes([i]): b"" for i in range(5)}], max_ops=3) == 1


def test_required_holds_per_kind() -> None:
    assert required_hold("sealed", {"type": "bid", "amount": 7}, 0) == 7
    assert required_hold("english", {"type": "bid", "amount": 7}, 9) == 9
    assert required_hold("multi_unit", {"type": "bid", "marginal": [5, 3]}, 0) == 8
    assert required_hold("combinatorial", {"type": "bundle_bid", "bundles": [{"amount": 4}, {"amount": 9}]}, 0) == 9
    assert required_hold("dutch", {"type": "accept"}, 0, clock_price=12) == 12
    assert required_hold("double_auction", {"type": "limit", "side": "buy", "price": 3, "quantity": 2}, 4) == 10
    assert required_hold("double_auction", {"type": "limit", "side": "sell", "price": 3, "quantity": 2}, 0) is None
    assert required_hold("vote", {"type": "cast"}, 0) is None
    with pytest.raises(EscrowRefused):
        required_hold("double_auction", {"type": "market", "side": "buy", "quantity": 2}, 0)


def test_settlement_and_market_changes() -> None:
    assert settlement("sealed", {"winner": "a", "price": 5}) == [settlement("english", {"winner": "a",
                                                                                       "price": 5})[0]]
    assert settlement("sealed", {"winner": None, "price": None}) == []
    assert [p.agent for p in settlement("multi_unit", {"awards": [{"bidder": "x", "payment": 3}]})] == ["x"]
    orders = {"b1": OrderInfo("buyer", "buy", 5), "s1": OrderInfo("seller", "sell", 4)}
    changes = market_changes([
        {"type": "trade", "buy_order": "b1", "sell_order": "s1", "seller": "seller", "price": 4, "quantity": 2},
        {"type": "order_done", "order_id": "b1", "reason": "cancelled", "remaining": 3},
        {"type": "order_done", "order_id": "s1", "reason": "cancelled", "remaining": 1}], orders)
    assert [(c.agent, c.used, c.price, c.payee) for c in changes] == [("buyer", 10, 8, "seller"),
                                                                      ("buyer", 15, 0, None)]
    assert participant({"voter": "v"}) == "v" and participant({}) is None


def test_event_log_must_be_contiguous() -> None:
    check_sequence("i", [1, 2, 3])
    with pytest.raises(ValueError):
        check_sequence("i", [1, 3])
