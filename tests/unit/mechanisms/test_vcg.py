"""Combinatorial auction with VCG: brute-force optimum, externality payments, tie rule, limits, validation."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mechanism_helpers import PROPERTY, rejects

from coordinator.mechanisms.base import Close
from coordinator.mechanisms.combinatorial import BundleBid, BundleOffer, CombinatorialAuction
from coordinator.mechanisms.errors import InvalidConfig, InvalidEvent, ProblemTooLarge

ITEMS = ["a", "b", "c", "d"]
Bids = list[tuple[str, list[tuple[frozenset[str], int]]]]


@st.composite
def instances(draw: st.DrawFn) -> Bids:
    """2-4 bidders, each with 1-3 distinct bundles over 4 items; small amounts so ties happen."""
    bids: Bids = []
    for bidder in range(draw(st.integers(2, 4))):
        subsets = st.frozensets(st.sampled_from(ITEMS), min_size=1, max_size=3)
        bundles = draw(st.lists(subsets, min_size=1, max_size=3, unique=True))
        bids.append((f"p{bidder}", [(bundle, draw(st.integers(1, 12))) for bundle in bundles]))
    return bids


def brute_force(bids: Bids, without: str | None = None) -> tuple[int, list[tuple[str, frozenset[str], int]]]:
    """Best welfare by enumerating every XOR choice; among optima the lexicographically greatest indicator."""
    flat = [(bidder, bundle, amount) for bidder, bundles in bids for bundle, amount in bundles]
    choices = [[None, *[i for i, entry in enumerate(flat) if entry[0] == bidder]]
               for bidder, _ in bids if bidder != without]
    best: tuple[int, tuple[int, ...]] = (0, tuple(0 for _ in flat))
    for pick in itertools.product(*choices):
        chosen = [i for i in pick if i is not None]
        used = [item for i in chosen for item in flat[i][1]]
        if len(used) != len(set(used)):
            continue
        indicator = tuple(1 if i in chosen else 0 for i in range(len(flat)))
        best = max(best, (sum(flat[i][2] for i in chosen), indicator))
    return best[0], [flat[i] for i, on in enumerate(best[1]) if on]


def auction(bids: Bids) -> CombinatorialAuction:
    mechanism = CombinatorialAuction({"items": ITEMS})
    for now, (bidder, bundles) in enumerate(bids):
        offers = [BundleOffer(items=sorted(bundle), amount=amount) for bundle, amount in bundles]
        mechanism.apply(BundleBid(bidder=bidder, bundles=offers), now)
    mechanism.apply(Close(), len(bids))
    return mechanism


@PROPERTY
@given(bids=instances())
def test_vcg_matches_brute_force_optimum_tie_rule_and_externality(bids: Bids) -> None:
    outcome = auction(bids).outcome()
    assert outcome is not None
    welfare, allocation = brute_force(bids)
    assert outcome.welfare == welfare
    # The documented tie rule picks the same optimal allocation as the brute-force lexicographic maximum.
    assert [(a.bidder, a.items) for a in outcome.awards] == [(b, sorted(items)) for b, items, _ in allocation]
    for award in outcome.awards:
        others_without, _ = brute_force(bids, without=award.bidder)
        assert award.others_welfare_without == others_without
        assert award.payment == others_without - (welfare - award.bid)
        assert 0 <= award.payment <= award.bid


@PROPERTY
@given(bids=instances(), liar=st.integers(0, 3), lie=st.integers(1, 12))
def test_vcg_truthful_bidding_is_dominant(bids: Bids, liar: int, lie: int) -> None:
    # Bidder `liar` scales every bundle amount to `lie`; its true values are the original amounts.
    liar %= len(bids)
    name, truth = bids[liar]
    lying = [*bids[:liar], (name, [(bundle, lie) for bundle, _ in truth]), *bids[liar + 1:]]

    def utility(submitted: Bids) -> int:
        outcome = auction(submitted).outcome()
        assert outcome is not None
        value = dict(truth)
        return sum(value[frozenset(a.items)] - a.payment for a in outcome.awards if a.bidder == name)

    assert utility(bids) >= utility(lying)


def test_hand_worked_example() -> None:
    # x wants {a,b} for 10; y wants {a} for 6 XOR {c} for 3; z wants {b} for 5.
    outcome = auction([("x", [(frozenset("ab"), 10)]), ("y", [(frozenset("a"), 6), (frozenset("c"), 3)]),
                       ("z", [(frozenset("b"), 5)])]).outcome()
    assert outcome is not None
    assert outcome.welfare == 13
    assert [(a.bidder, a.items, a.payment) for a in outcome.awards] == [("x", ["a", "b"], 8), ("y", ["c"], 0)]
    assert outcome.revenue == 8


def test_validation_and_limits() -> None:
    mechanism = CombinatorialAuction({"items": ITEMS, "bidders": ["p", "q"], "max_bundles": 3})
    mechanism.apply(BundleBid(bidder="p", bundles=[BundleOffer(items=["a"], amount=3)]), 0)
    rejects(mechanism, BundleBid(bidder="r", bundles=[BundleOffer(items=["a"], amount=3)]), 1, InvalidEvent,
            "unknown bidder")
    rejects(mechanism, BundleBid(bidder="q", bundles=[BundleOffer(items=["z"], amount=3)]), 1, InvalidEvent,
            "unknown item")
    rejects(mechanism, BundleBid(bidder="q", bundles=[BundleOffer(items=["a", "a"], amount=3)]), 1,
            InvalidEvent, "twice")
    rejects(mechanism, BundleBid(bidder="q", bundles=[BundleOffer(items=["a"], amount=3),
                                                      BundleOffer(items=["a"], amount=4)]), 1, InvalidEvent,
            "repeats")
    rejects(mechanism, {"type": "bundle_bid", "bidder": "q", "bundles": [{"items": [], "amount": 3}]}, 1,
            InvalidEvent, "items")
    rejects(mechanism, {"type": "bundle_bid", "bidder": "q", "bundles": []}, 1, InvalidEvent, "bundles")
    rejects(mechanism, BundleBid(bidder="p", bundles=[BundleOffer(items=["b"], amount=3)]), 1, InvalidEvent,
            "already bid")
    rejects(mechanism, BundleBid(bidder="q", bundles=[BundleOffer(items=[i], amount=3) for i in "bcd"]), 1,
            ProblemTooLarge, "max_bundles=3")
    with pytest.raises(ProblemTooLarge, match="max_items"):
        CombinatorialAuction({"items": ITEMS, "max_items": 3})
    with pytest.raises(InvalidConfig, match="duplicates"):
        CombinatorialAuction({"items": ["a", "a"]})
