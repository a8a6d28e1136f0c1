"""English and Dutch clock auctions driven by an injected clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from mechanism_helpers import PROPERTY, rejects

from coordinator.mechanisms.base import ScheduleTick, Tick
from coordinator.mechanisms.clock import Accept, DutchAuction, EnglishAuction, RaiseBid
from coordinator.mechanisms.errors import InvalidConfig, InvalidEvent, MechanismClosed


def straightforward_english(values: list[int], increment: int, start: int) -> EnglishAuction:
    """Bidders raise by one increment in turn while the next price is within their value."""
    auction = EnglishAuction({"start_price": start, "min_increment": increment, "quiet_period": 5,
                              "hard_deadline": 10**9})
    now = 0
    moved = True
    while moved:
        moved = False
        for index, value in enumerate(values):
            bidder = f"b{index}"
            high_bidder, _ = auction.standing()
            if bidder != high_bidder and auction.minimum_bid() <= value:
                now += 1
                auction.apply(RaiseBid(bidder=bidder, amount=auction.minimum_bid()), now)
                moved = True
    auction.apply(Tick(), now + 5)
    return auction


@PROPERTY
@given(values=st.lists(st.integers(10, 400), min_size=2, max_size=6), increment=st.integers(1, 5))
def test_english_ends_within_one_increment_of_second_value(values: list[int], increment: int) -> None:
    auction = straightforward_english(values, increment, start=10)
    outcome = auction.outcome()
    assert outcome is not None and outcome.price is not None and outcome.reason == "quiet_period"
    second = sorted(values, reverse=True)[1]
    assert abs(outcome.price - second) <= increment
    assert values[int(outcome.winner[1:])] >= outcome.price  # type: ignore[index]


def test_english_quiet_period_hard_deadline_and_validation() -> None:
    auction = EnglishAuction({"start_price": 100, "min_increment": 10, "opens_at": 10, "quiet_period": 50,
                              "hard_deadline": 120, "bidders": ["a", "b"]})
    rejects(auction, RaiseBid(bidder="a", amount=100), 5, InvalidEvent, "before opening")
    rejects(auction, RaiseBid(bidder="a", amount=99), 20, InvalidEvent, "start price")
    rejects(auction, RaiseBid(bidder="z", amount=150), 20, InvalidEvent, "unknown bidder")
    actions = auction.apply(RaiseBid(bidder="a", amount=100), 20)
    assert ScheduleTick(at=70) in actions
    rejects(auction, RaiseBid(bidder="b", amount=105), 30, InvalidEvent, "minimum increment")
    rejects(auction, RaiseBid(bidder="a", amount=200), 30, InvalidEvent, "already holds")
    auction.apply(RaiseBid(bidder="b", amount=110), 69)
    assert auction.closes_at() == 119
    auction.apply(RaiseBid(bidder="a", amount=130), 100)
    assert auction.closes_at() == 120  # the hard deadline caps the quiet period
    rejects(auction, RaiseBid(bidder="b", amount=200), 120, MechanismClosed, "closed at 120")
    auction.apply(Tick(), 125)
    outcome = auction.outcome()
    assert outcome is not None
    assert (outcome.winner, outcome.price, outcome.closed_at, outcome.reason) == ("a", 130, 120, "hard_deadline")


def test_english_no_bids_no_sale() -> None:
    auction = EnglishAuction({"start_price": 5, "min_increment": 1, "quiet_period": 10, "hard_deadline": 50})
    auction.apply(Tick(), 10)
    assert auction.outcome() is not None and auction.outcome().winner is None  # type: ignore[union-attr]


@PROPERTY
@given(start=st.integers(1, 500), decrement=st.integers(1, 50), interval=st.integers(1, 20),
       floor_share=st.integers(0, 100), accept_at=st.integers(0, 2000), opens_at=st.integers(0, 50))
def test_dutch_first_acceptance_wins_at_clock_price(start: int, decrement: int, interval: int,
                                                    floor_share: int, accept_at: int, opens_at: int) -> None:
    floor = start * floor_share // 100
    auction = DutchAuction({"start_price": start, "decrement": decrement, "tick_interval": interval,
                            "floor": floor, "opens_at": opens_at})
    step = (accept_at - opens_at) // interval
    clock = start - step * decrement
    if accept_at < opens_at:
        rejects(auction, Accept(bidder="x"), accept_at, InvalidEvent, "before opening")
    elif clock < floor:
        rejects(auction, Accept(bidder="x"), accept_at, MechanismClosed, "expired")
        auction.apply(Tick(), accept_at)
        assert auction.outcome() is not None and auction.outcome().reason == "expired"  # type: ignore[union-attr]
    else:
        auction.apply(Accept(bidder="x"), accept_at)
        outcome = auction.outcome()
        assert outcome is not None and (outcome.winner, outcome.price) == ("x", clock)
        assert floor <= outcome.price <= start  # type: ignore[operator]
        rejects(auction, Accept(bidder="y"), accept_at, MechanismClosed)


def test_dutch_ticks_announce_prices() -> None:
    auction = DutchAuction({"start_price": 100, "decrement": 10, "tick_interval": 5, "floor": 75})
    first = auction.apply(Tick(), 0)
    assert first[0].model_dump() == {"type": "clock_price", "price": 100, "until": 5}
    assert [auction.price_at(t) for t in (0, 5, 10, 15, 20)] == [100, 90, 80, None, None]
    assert auction.expires_at() == 15
    rejects(auction, Accept(bidder="b"), 15, MechanismClosed)
    try:
        DutchAuction({"start_price": 10, "decrement": 1, "tick_interval": 1, "floor": 11})
    except InvalidConfig as error:
        assert "floor" in error.problem
    else:
        raise AssertionError("floor above start accepted")
