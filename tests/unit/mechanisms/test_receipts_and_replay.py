"""Every mechanism: same events give the same outcome and receipt hash; receipts verify; replay rebuilds."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mechanism_helpers import PROPERTY, state_of, try_apply

from coordinator.mechanisms import (
    AlternatingOffers,
    CallMarket,
    CombinatorialAuction,
    ContractNet,
    DoubleAuction,
    DutchAuction,
    EnglishAuction,
    MediatedBargaining,
    MultiUnitAuction,
    SealedBidAuction,
    Vote,
    verify_receipt,
)
from coordinator.mechanisms.base import Mechanism, mechanism_classes
from coordinator.mechanisms.errors import MechanismClosed
from coordinator.mechanisms.receipts import canonical_json

BARGAIN = {"issues": [{"name": "price", "options": ["low", "high"]}],
           "parties": [{"party": "a", "weights": {"price": 1}, "scores": {"price": {"low": 9, "high": 2}},
                        "reservation": 1},
                       {"party": "b", "weights": {"price": 1}, "scores": {"price": {"low": 3, "high": 8}},
                        "reservation": 2}],
           "deadline": 50}

# (mechanism class, config, [(now, event as JSON)]): one short script per family that reaches an outcome.
SCRIPTS: list[tuple[type[Mechanism[Any, Any]], dict[str, Any], list[tuple[int, dict[str, Any]]]]] = [
    (SealedBidAuction, {"pricing": "second", "reserve": 5},
     [(1, {"type": "bid", "bidder": "a", "amount": 9}), (2, {"type": "bid", "bidder": "b", "amount": 7}),
      (3, {"type": "close"})]),
    (EnglishAuction, {"start_price": 10, "min_increment": 2, "quiet_period": 5, "hard_deadline": 40},
     [(1, {"type": "bid", "bidder": "a", "amount": 10}), (3, {"type": "bid", "bidder": "b", "amount": 12}),
      (9, {"type": "tick"})]),
    (DutchAuction, {"start_price": 50, "decrement": 5, "tick_interval": 2, "floor": 20},
     [(0, {"type": "tick"}), (5, {"type": "accept", "bidder": "z"})]),
    (MultiUnitAuction, {"units": 2, "pricing": "vickrey"},
     [(1, {"type": "bid", "bidder": "a", "marginal": [9, 4]}), (2, {"type": "bid", "bidder": "b", "marginal": [6]}),
      (3, {"type": "close"})]),
    (CombinatorialAuction, {"items": ["x", "y"]},
     [(1, {"type": "bundle_bid", "bidder": "a", "bundles": [{"items": ["x", "y"], "amount": 10}]}),
      (2, {"type": "bundle_bid", "bidder": "b", "bundles": [{"items": ["x"], "amount": 6}]}),
      (3, {"type": "bundle_bid", "bidder": "c", "bundles": [{"items": ["y"], "amount": 6}]}),
      (4, {"type": "close"})]),
    (DoubleAuction, {},
     [(1, {"type": "limit", "order_id": "s", "trader": "a", "side": "sell", "price": 10, "quantity": 5}),
      (2, {"type": "limit", "order_id": "b", "trader": "b", "side": "buy", "price": 12, "quantity": 3}),
      (3, {"type": "close"})]),
    (CallMarket, {},
     [(1, {"type": "limit", "order_id": "s", "trader": "a", "side": "sell", "price": 10, "quantity": 5}),
      (2, {"type": "limit", "order_id": "b", "trader": "b", "side": "buy", "price": 12, "quantity": 3}),
      (3, {"type": "clear"}), (4, {"type": "close"})]),
    (ContractNet, {"contractors": ["p", "q"]},
     [(0, {"type": "cfp", "task_id": "t", "deadline": 5}),
      (1, {"type": "propose", "task_id": "t", "contractor": "p", "cost": 4}),
      (2, {"type": "propose", "task_id": "t", "contractor": "q", "cost": 3}),
      (5, {"type": "tick"}), (6, {"type": "report", "task_id": "t", "contractor": "q", "result": "done"}),
      (7, {"type": "close"})]),
    (AlternatingOffers, BARGAIN,
     [(1, {"type": "offer", "party": "a", "terms": {"price": "low"}}), (2, {"type": "accept", "party": "b"})]),
    (MediatedBargaining, BARGAIN,
     [(1, {"type": "respond", "party": "a", "accept": True}), (2, {"type": "respond", "party": "b", "accept": True})]),
    (Vote, {"rule": "irv", "options": ["x", "y", "z"], "voters": {"u": 1, "v": 1, "w": 1}},
     [(1, {"type": "cast_ranked", "voter": "u", "ranking": ["x", "y"]}),
      (2, {"type": "cast_ranked", "voter": "v", "ranking": ["y"]}),
      (3, {"type": "cast_ranked", "voter": "w", "ranking": ["z", "y"]}), (4, {"type": "close"})]),
]


def run(script: tuple[type[Mechanism[Any, Any]], dict[str, Any], list[tuple[int, dict[str, Any]]]]) -> Any:
    cls, config, events = script
    mechanism = cls(config)
    for now, event in events:
        mechanism.apply(event, now)
    assert mechanism.concluded
    return mechanism


def test_scripts_cover_every_built_in_kind() -> None:
    # Kinds defined elsewhere (the toy kind of tests/integration/coordinator) bring their own tests.
    built_in = [cls.kind for cls in mechanism_classes() if cls.__module__.startswith("coordinator.mechanisms.")]
    assert sorted(cls.kind for cls, _, _ in SCRIPTS) == built_in


@pytest.mark.parametrize("script", SCRIPTS, ids=[cls.kind for cls, _, _ in SCRIPTS])
def test_determinism_replay_and_receipt(script: Any) -> None:
    first, second = run(script), run(script)
    assert first.outcome() == second.outcome()
    receipt = first.receipt()
    assert receipt.hash == second.receipt().hash
    assert verify_receipt(receipt)
    # Through JSON and back: the persisted form replays to the same state and the same hash.
    stored = json.loads(json.dumps([entry.model_dump() for entry in first.accepted_events()]))
    rebuilt = type(first).replay(json.loads(json.dumps(receipt.config)), stored)
    assert state_of(rebuilt) == state_of(first)
    assert rebuilt.receipt().hash == receipt.hash
    assert verify_receipt(json.loads(json.dumps(receipt.model_dump())))
    # Tampering with the outcome, or forging a matching hash for a false outcome, fails verification.
    forged_outcome = {**receipt.outcome, "forged": 1}
    assert not verify_receipt(receipt.model_copy(update={"outcome": forged_outcome}))
    from coordinator.mechanisms.receipts import receipt_hash
    forged = receipt.model_copy(update={"outcome": forged_outcome, "hash": receipt_hash(
        receipt.mechanism, receipt.config, receipt.events, forged_outcome)})
    assert not verify_receipt(forged)
    with pytest.raises(MechanismClosed):
        first.apply({"type": script[2][-1][1]["type"], **script[2][-1][1]}, 10**6)


def test_canonical_json_is_sorted_compact_and_refuses_floats() -> None:
    assert canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'.encode()
    with pytest.raises(TypeError, match="float"):
        canonical_json({"price": 0.1})


@st.composite
def noisy_order_flow(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Random order-book events as JSON, including invalid ones (zero prices, bad cancels, duplicates)."""
    events = []
    for index in range(draw(st.integers(1, 30))):
        kind = draw(st.sampled_from(["limit", "market", "cancel"]))
        event: dict[str, Any] = {"type": kind, "order_id": f"o{draw(st.integers(0, index))}",
                                 "trader": draw(st.sampled_from(["a", "b", "c"]))}
        if kind != "cancel":
            event |= {"side": draw(st.sampled_from(["buy", "sell"])), "quantity": draw(st.integers(0, 6))}
        if kind == "limit":
            event["price"] = draw(st.integers(0, 12))
        events.append(event)
    return events


@PROPERTY
@given(events=noisy_order_flow())
def test_replaying_accepted_events_rebuilds_state_and_hash(events: list[dict[str, Any]]) -> None:
    # Rejected events are skipped (never persisted); replaying the accepted ones gives the same state.
    live = DoubleAuction({})
    for now, event in enumerate(events):
        try_apply(live, event, now)
    records = json.loads(json.dumps([entry.model_dump() for entry in live.accepted_events()]))
    rebuilt = DoubleAuction.replay({}, records)
    assert state_of(rebuilt) == state_of(live)
    live.apply({"type": "close"}, len(events))
    rebuilt.apply({"type": "close"}, len(events))
    assert live.receipt().hash == rebuilt.receipt().hash and verify_receipt(live.receipt())
