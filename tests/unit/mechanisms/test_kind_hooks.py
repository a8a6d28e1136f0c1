"""What the coordinator reads off a mechanism class: family, time fields, escrow rules, status views."""

from __future__ import annotations

import pytest

from coordinator.mechanisms import (
    CallMarket,
    CombinatorialAuction,
    DoubleAuction,
    DutchAuction,
    EnglishAuction,
    MultiUnitAuction,
    SealedBidAuction,
    Vote,
)
from coordinator.mechanisms.base import FAMILIES, Close, HoldChange, Payment, mechanism_classes
from coordinator.mechanisms.errors import EscrowRefused
from coordinator.mechanisms.market import MarketMechanism


def test_every_kind_names_its_family_and_real_config_fields() -> None:
    # The registry is what FAMILIES, the deadline scheduling and the CLI derive from.
    classes = mechanism_classes()
    assert {cls.kind for cls in classes} >= {"sealed", "english", "dutch", "multi_unit", "combinatorial",
                                              "contract_net", "alternating_offers", "mediated_bargaining", "vote",
                                              "double_auction", "call_market"}
    for cls in classes:
        assert cls.family in FAMILIES
        fields = cls.config_type.model_fields
        assert all(name in fields for name in cls.deadline_fields), cls.kind
        assert cls.closes_field is None or cls.closes_field in cls.deadline_fields, cls.kind
        assert cls.summary()
        if cls.family == "market":
            assert issubclass(cls, MarketMechanism), cls.kind  # GetBook and WatchTrades rely on it


def test_a_kind_without_a_family_or_with_a_wrong_field_is_refused_at_definition() -> None:
    with pytest.raises(TypeError, match="family"):
        class NoFamily(SealedBidAuction):
            kind = "test_no_family"
            family = "raffle"  # type: ignore[assignment]
    with pytest.raises(TypeError, match="config fields"):
        class WrongField(SealedBidAuction):
            kind = "test_wrong_field"
            deadline_fields = ("closes_when",)


def _hold(mechanism, event, current=0, now=1):
    return mechanism.required_hold(mechanism.parse_event(event), current, now)


def test_escrow_holds_per_kind() -> None:
    assert _hold(SealedBidAuction({"pricing": "first"}), {"type": "bid", "bidder": "a", "amount": 7}) == 7
    english = EnglishAuction({"start_price": 1, "min_increment": 1, "quiet_period": 10, "hard_deadline": 100})
    assert _hold(english, {"type": "bid", "bidder": "a", "amount": 7}, current=9) == 9
    multi = MultiUnitAuction({"units": 2, "pricing": "uniform"})
    assert _hold(multi, {"type": "bid", "bidder": "a", "marginal": [5, 3]}) == 8
    combo = CombinatorialAuction({"items": ["x", "y"]})
    assert _hold(combo, {"type": "bundle_bid", "bidder": "a", "bundles": [{"items": ["x"], "amount": 4},
                                                                          {"items": ["y"], "amount": 9}]}) == 9
    dutch = DutchAuction({"start_price": 20, "decrement": 2, "tick_interval": 10, "floor": 5, "opens_at": 0})
    assert _hold(dutch, {"type": "accept", "bidder": "a"}, now=25) == 16  # the clock price at the accept
    market = DoubleAuction({})
    assert _hold(market, {"type": "limit", "order_id": "o", "trader": "t", "side": "buy", "price": 3,
                          "quantity": 2}, current=4) == 10
    assert _hold(market, {"type": "limit", "order_id": "o", "trader": "t", "side": "sell", "price": 3,
                          "quantity": 2}) is None
    with pytest.raises(EscrowRefused):
        _hold(market, {"type": "market", "order_id": "o", "trader": "t", "side": "buy", "quantity": 2})
    vote = Vote({"rule": "majority", "options": ["x", "y"], "voters": {"v": 1}})
    assert _hold(vote, {"type": "cast", "voter": "v", "choice": "x"}) is None
    assert vote.participant(vote.parse_event({"type": "cast", "voter": "v", "choice": "x"})) == "v"


def test_payments_on_conclusion() -> None:
    sealed = SealedBidAuction({"pricing": "second", "reserve": 2})
    assert sealed.payments() == []  # not concluded yet
    sealed.apply({"type": "bid", "bidder": "a", "amount": 7}, 1)
    sealed.apply({"type": "bid", "bidder": "b", "amount": 5}, 2)
    sealed.apply(Close(), 3)
    assert sealed.payments() == [Payment("a", 5)]
    empty = SealedBidAuction({"pricing": "first"})
    empty.apply(Close(), 1)
    assert empty.payments() == []
    multi = MultiUnitAuction({"units": 1, "pricing": "pay_as_bid"})
    multi.apply({"type": "bid", "bidder": "x", "marginal": [3]}, 1)
    multi.apply(Close(), 2)
    assert multi.payments() == [Payment("x", 3)]


def test_market_hold_changes_follow_trades_and_cancels() -> None:
    for cls in (DoubleAuction, CallMarket):
        market = cls({})
        market.apply({"type": "limit", "order_id": "s1", "trader": "seller", "side": "sell", "price": 4,
                      "quantity": 2}, 1)
        placed = market.apply({"type": "limit", "order_id": "b1", "trader": "buyer", "side": "buy", "price": 5,
                               "quantity": 5}, 2)
        if cls is CallMarket:
            placed = market.apply({"type": "clear"}, 3)
        trades = [a for a in placed if a.type == "trade"]
        changes = market.hold_changes(placed)
        assert changes[0] == HoldChange("buyer", 10, 2 * trades[0].price, "seller"), cls.kind
        cancelled = market.apply({"type": "cancel", "order_id": "b1", "trader": "buyer"}, 4)
        assert market.hold_changes(cancelled) == [HoldChange("buyer", 15, 0, None)], cls.kind


def test_status_views() -> None:
    english = EnglishAuction({"start_price": 1, "min_increment": 1, "quiet_period": 10, "hard_deadline": 100})
    english.apply({"type": "bid", "bidder": "a", "amount": 7}, 1)
    assert english.status_view(2) == {"high_bidder": "a", "high_bid": 7, "closes_at": 11, "minimum_bid": 8}
    dutch = DutchAuction({"start_price": 20, "decrement": 2, "tick_interval": 10, "floor": 5})
    assert dutch.status_view(25) == {"price": 16, "expires_at": 80}
    market = DoubleAuction({})
    market.apply({"type": "limit", "order_id": "b", "trader": "t", "side": "buy", "price": 3, "quantity": 1}, 1)
    assert market.status_view(2) == {"best_bid": 3, "best_ask": None, "resting_orders": 1}
    assert SealedBidAuction({"pricing": "first"}).status_view(1) == {}  # sealed bids stay sealed
