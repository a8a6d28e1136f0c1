"""Sealed-bid auctions: Vickrey truthfulness, first-price winner, tie-break, reserve, validation."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from mechanism_helpers import PROPERTY, rejects, try_apply

from coordinator.mechanisms.base import Close, Tick
from coordinator.mechanisms.errors import InvalidConfig, InvalidEvent, MechanismClosed
from coordinator.mechanisms.sealed import Bid, SealedBidAuction


def run(pricing: str, bids: list[tuple[str, int, int]], reserve: int = 0) -> SealedBidAuction:
    """Run an auction with (bidder, amount, time) bids, skipping refused ones, then close."""
    auction = SealedBidAuction({"pricing": pricing, "reserve": reserve})
    last = 0
    for bidder, amount, at in sorted(bids, key=lambda bid: bid[2]):
        try_apply(auction, Bid(bidder=bidder, amount=amount), at)
        last = at
    auction.apply(Close(), last)
    return auction


def utility(auction: SealedBidAuction, bidder: str, value: int) -> int:
    outcome = auction.outcome()
    assert outcome is not None
    return value - outcome.price if outcome.winner == bidder and outcome.price is not None else 0


amounts = st.integers(min_value=1, max_value=200)


@PROPERTY
@given(value=amounts, deviation=amounts, others=st.lists(amounts, max_size=6), reserve=st.integers(0, 100),
       position=st.integers(0, 6))
def test_vickrey_truthful_bidding_is_weakly_dominant(value: int, deviation: int, others: list[int],
                                                     reserve: int, position: int) -> None:
    # Bidder "me" bids at a random position in time; ties resolved by the documented rule either way.
    def bids(mine: int) -> list[tuple[str, int, int]]:
        placed = [(f"o{i}", amount, i if i < position else i + 1) for i, amount in enumerate(others)]
        return [*placed, ("me", mine, min(position, len(others)))]

    truthful = utility(run("second", bids(value), reserve), "me", value)
    deviating = utility(run("second", bids(deviation), reserve), "me", value)
    assert truthful >= deviating
    assert truthful >= 0


@PROPERTY
@given(bids=st.lists(amounts, min_size=1, max_size=8), reserve=st.integers(0, 100),
       pricing=st.sampled_from(["first", "second"]))
def test_price_never_exceeds_winning_bid_and_respects_reserve(bids: list[int], reserve: int,
                                                              pricing: str) -> None:
    auction = run(pricing, [(f"b{i}", amount, i) for i, amount in enumerate(bids)], reserve)
    outcome = auction.outcome()
    assert outcome is not None
    valid = [amount for amount in bids if amount >= reserve]
    if not valid:
        assert outcome.winner is None and outcome.price is None
        return
    assert outcome.winning_bid == max(valid)
    assert outcome.price is not None and reserve <= outcome.price <= max(valid)
    if pricing == "second":
        ordered = sorted(valid, reverse=True)
        assert outcome.price == max(ordered[1] if len(ordered) > 1 else 0, reserve)


@PROPERTY
@given(bids=st.lists(st.tuples(st.integers(1, 5), st.integers(0, 3)), min_size=1, max_size=8))
def test_first_price_winner_holds_highest_bid_with_documented_ties(bids: list[tuple[int, int]]) -> None:
    # Few distinct amounts and times so ties on amount and on time are common.
    entries = [(f"b{i:02d}", amount, at) for i, (amount, at) in enumerate(bids)]
    outcome = run("first", entries).outcome()
    assert outcome is not None
    expected = sorted(entries, key=lambda e: (-e[1], e[2], e[0]))[0]
    assert (outcome.winner, outcome.price) == (expected[0], expected[1])


def test_tie_break_earliest_then_bidder_id() -> None:
    # Same amount: the earlier bid wins; same amount and time: the smaller id wins.
    assert run("first", [("zed", 10, 1), ("amy", 10, 2)]).outcome().winner == "zed"  # type: ignore[union-attr]
    assert run("first", [("zed", 10, 1), ("amy", 10, 1)]).outcome().winner == "amy"  # type: ignore[union-attr]
    # Vickrey with a tie at the top: the winner pays the tied amount.
    assert run("second", [("a", 10, 1), ("b", 10, 2)]).outcome().price == 10  # type: ignore[union-attr]


def test_vickrey_single_bid_pays_reserve() -> None:
    outcome = run("second", [("a", 70, 1)], reserve=30).outcome()
    assert outcome is not None and (outcome.winner, outcome.price) == ("a", 30)


def test_rejected_bids_leave_state_unchanged() -> None:
    auction = SealedBidAuction({"pricing": "second", "reserve": 10, "closes_at": 100, "bidders": ["a", "b"]})
    auction.apply(Bid(bidder="a", amount=20), 1)
    rejects(auction, Bid(bidder="b", amount=5), 2, InvalidEvent, "below the reserve")
    rejects(auction, Bid(bidder="x", amount=50), 2, InvalidEvent, "unknown bidder 'x'")
    rejects(auction, Bid(bidder="a", amount=50), 2, InvalidEvent, "already bid")
    rejects(auction, {"type": "bid", "bidder": "b", "amount": -5}, 2, InvalidEvent, "amount")
    rejects(auction, {"type": "bid", "bidder": "b", "amount": float("inf")}, 2, InvalidEvent, "amount")
    rejects(auction, {"type": "bid", "bidder": "b", "amount": 12.5}, 2, InvalidEvent, "amount")
    rejects(auction, {"type": "bid", "bidder": "b"}, 2, InvalidEvent, "amount")
    rejects(auction, {"type": "nonsense"}, 2, InvalidEvent)
    rejects(auction, Bid(bidder="b", amount=50), 0, InvalidEvent, "time went backwards")
    rejects(auction, Bid(bidder="b", amount=50), 100, MechanismClosed, "after closing time")
    assert auction.apply(Tick(), 99) == []
    auction.apply(Tick(), 100)
    assert auction.outcome() is not None and auction.outcome().winner == "a"  # type: ignore[union-attr]
    rejects(auction, Bid(bidder="b", amount=50), 101, MechanismClosed)


def test_invalid_config_is_typed() -> None:
    for config in ({"pricing": "third"}, {"pricing": "first", "reserve": -1},
                   {"pricing": "first", "reserve": float("nan")}, {"pricing": "first", "extra": 1}):
        try:
            SealedBidAuction(config)
        except InvalidConfig as error:
            assert "sealed config" in error.problem
        else:
            raise AssertionError(f"accepted {config}")
