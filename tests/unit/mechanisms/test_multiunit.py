"""Multi-unit auctions: uniform-price rules, pay-as-bid, Vickrey externality by brute force, validation."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mechanism_helpers import PROPERTY, rejects

from coordinator.mechanisms.base import Close
from coordinator.mechanisms.errors import InvalidEvent
from coordinator.mechanisms.multiunit import MultiUnitAuction, MultiUnitBid, MultiUnitOutcome


def run(units: int, pricing: str, bids: list[list[int]], reserve: int = 0, **extra: object) -> MultiUnitOutcome:
    auction = MultiUnitAuction({"units": units, "pricing": pricing, "reserve": reserve, **extra})
    for now, marginal in enumerate(bids):
        auction.apply(MultiUnitBid(bidder=f"b{now}", marginal=marginal), now)
    auction.apply(Close(), len(bids))
    outcome = auction.outcome()
    assert outcome is not None
    return outcome


def best_welfare(units: int, bids: list[list[int]], reserve: int) -> int:
    """Brute force: every way to give each bidder a prefix of its units; unsold units are worth the reserve."""
    best = 0
    for counts in itertools.product(*[range(len(marginal) + 1) for marginal in bids]):
        if sum(counts) <= units:
            value = sum(sum(m[:c]) for m, c in zip(bids, counts, strict=True)) + reserve * (units - sum(counts))
            best = max(best, value)
    return best


marginals = st.lists(st.integers(5, 30), min_size=1, max_size=3).map(lambda xs: sorted(xs, reverse=True))


@PROPERTY
@given(units=st.integers(1, 4), bids=st.lists(marginals, min_size=1, max_size=4), reserve=st.integers(0, 5))
def test_vickrey_payment_is_brute_force_externality(units: int, bids: list[list[int]], reserve: int) -> None:
    bids = [m[:units] for m in bids]
    outcome = run(units, "vickrey", bids, reserve)
    welfare = best_welfare(units, bids, reserve)
    for award in outcome.awards:
        index = int(award.bidder[1:])
        others = [m if i != index else [] for i, m in enumerate(bids)]
        own_value = sum(bids[index][:award.units])
        # Externality: others' best welfare without i, minus others' welfare in the efficient allocation.
        assert award.payment == best_welfare(units, others, reserve) - (welfare - own_value)
        assert reserve * award.units <= award.payment <= own_value


@PROPERTY
@given(units=st.integers(1, 5), bids=st.lists(marginals, min_size=1, max_size=5), reserve=st.integers(0, 5),
       pricing=st.sampled_from(["uniform", "pay_as_bid", "vickrey"]),
       rule=st.sampled_from(["highest_losing", "lowest_winning"]))
def test_payments_individually_rational_and_supply_respected(units: int, bids: list[list[int]], reserve: int,
                                                             pricing: str, rule: str) -> None:
    bids = [m[:units] for m in bids]
    outcome = run(units, pricing, bids, reserve, uniform_rule=rule)
    assert outcome.units_sold == sum(a.units for a in outcome.awards) == min(units, sum(map(len, bids)))
    for award in outcome.awards:
        own = bids[int(award.bidder[1:])][:award.units]
        assert reserve * award.units <= award.payment <= sum(own)


def test_hand_worked_three_units() -> None:
    # 3 units; A bids [10, 8], B bids [9, 3], C bids [5]. Winning unit bids: 10 (A), 9 (B), 8 (A); losing: 5, 3.
    bids = [[10, 8], [9, 3], [5]]
    uniform = run(3, "uniform", bids)
    assert uniform.uniform_price == 5
    assert [(a.bidder, a.units, a.payment) for a in uniform.awards] == [("b0", 2, 10), ("b1", 1, 5)]
    assert run(3, "uniform", bids, uniform_rule="lowest_winning").uniform_price == 8
    assert [a.payment for a in run(3, "pay_as_bid", bids).awards] == [18, 9]
    # Vickrey: A displaces B's 3 and C's 5 -> pays 8; B displaces C's 5 -> pays 5.
    assert [a.payment for a in run(3, "vickrey", bids).awards] == [8, 5]


def test_validation() -> None:
    auction = MultiUnitAuction({"units": 2, "pricing": "uniform", "reserve": 4, "bidders": ["a", "b"]})
    rejects(auction, MultiUnitBid(bidder="a", marginal=[5, 6]), 0, InvalidEvent, "non-increasing")
    rejects(auction, MultiUnitBid(bidder="a", marginal=[5, 5, 5]), 0, InvalidEvent, "only 2")
    rejects(auction, MultiUnitBid(bidder="a", marginal=[5, 3]), 0, InvalidEvent, "below the reserve")
    rejects(auction, MultiUnitBid(bidder="z", marginal=[5]), 0, InvalidEvent, "unknown bidder")
    rejects(auction, {"type": "bid", "bidder": "a", "marginal": [5, -1]}, 0, InvalidEvent, "marginal")
    auction.apply(MultiUnitBid(bidder="a", marginal=[5]), 0)
    rejects(auction, MultiUnitBid(bidder="a", marginal=[9]), 1, InvalidEvent, "already bid")
    with pytest.raises(Exception, match="units"):
        MultiUnitAuction({"units": 0, "pricing": "uniform"})
