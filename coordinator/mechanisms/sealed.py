"""Sealed-bid auctions for one item: first-price and second-price (Vickrey), with a reserve.

Rules
-----
* Each bidder submits at most one sealed bid (a second bid is refused: a
  sealed bid cannot be revised once committed). A bid below the reserve is
  refused. When ``bidders`` is configured, unknown bidders are refused.
* The auction closes on an explicit :class:`Close`, or on a :class:`Tick` at or
  after ``closes_at``; a bid at or after ``closes_at`` is refused.
* **Ranking and tie-break**: bids are ranked by amount (highest first), then
  by the time they were applied (earliest first), then by bidder id
  (lexicographically smallest first). The first-ranked bid wins.
* **First price**: the winner pays their own bid.
* **Second price (Vickrey)**: the winner pays the larger of the second-ranked
  bid and the reserve (the reserve alone when there is one bid).

Economic properties (checked in ``tests/unit/mechanisms/test_sealed.py``)
-------------------------------------------------------------------------
* Vickrey: bidding one's true value is a weakly dominant strategy — no
  deviation ever raises a bidder's utility (value − price if winning, else 0).
* Both formats: the price never exceeds the winner's bid and is at least the
  reserve (individual rationality for the winner and the seller).
* First price: the winner holds the highest bid.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from coordinator.mechanisms.base import (
    Action,
    Amount,
    Close,
    Ident,
    Mechanism,
    Model,
    Payment,
    PositiveAmount,
    ScheduleTick,
    Tick,
    Time,
)
from coordinator.mechanisms.errors import InvalidEvent, MechanismClosed


class SealedConfig(Model):
    """A sealed-bid auction's rules; ``bidders=None`` admits anyone."""

    pricing: Literal["first", "second"]
    reserve: Amount = 0
    closes_at: Time | None = None
    bidders: list[Ident] | None = None


class Bid(Model):
    """A sealed bid of ``amount`` by ``bidder``."""

    type: Literal["bid"] = "bid"
    bidder: Ident
    amount: PositiveAmount


SealedEvent = Annotated[Bid | Close | Tick, Field(discriminator="type")]


class SealedOutcome(Model):
    """Who won and what they pay; ``winner`` is None when no valid bid arrived."""

    pricing: Literal["first", "second"]
    winner: str | None
    price: int | None
    winning_bid: int | None
    bid_count: int


class RankedBid(Model):
    """A bid with the time it was accepted, for ranking."""

    bidder: str
    amount: int
    at: int


def rank_bids(bids: list[RankedBid]) -> list[RankedBid]:
    """Bids in winning order: highest amount, then earliest, then smallest bidder id."""
    return sorted(bids, key=lambda bid: (-bid.amount, bid.at, bid.bidder))


class SealedBidAuction(Mechanism[SealedConfig, SealedOutcome]):
    """A first- or second-price sealed-bid auction (see the module docstring for the rules)."""

    kind = "sealed"
    family = "auction"
    deadline_fields = ("closes_at",)
    closes_field = "closes_at"
    config_type = SealedConfig
    event_type = SealedEvent
    outcome_type = SealedOutcome

    def __init__(self, config: SealedConfig | dict[str, object]) -> None:
        super().__init__(config)
        self._bids: dict[str, RankedBid] = {}
        self._known = None if self.config.bidders is None else frozenset(self.config.bidders)

    def _step(self, event: Bid | Close | Tick, now: int) -> list[Action]:
        deadline = self.config.closes_at
        if isinstance(event, Bid):
            if deadline is not None and now >= deadline:
                raise MechanismClosed(f"bid by {event.bidder!r} at {now} after closing time {deadline}")
            if self._known is not None and event.bidder not in self._known:
                raise InvalidEvent(f"unknown bidder {event.bidder!r}")
            if event.bidder in self._bids:
                raise InvalidEvent(f"bidder {event.bidder!r} has already bid; sealed bids are final")
            if event.amount < self.config.reserve:
                raise InvalidEvent(f"bid {event.amount} by {event.bidder!r} is below the reserve "
                                   f"{self.config.reserve}")
            self._bids[event.bidder] = RankedBid(bidder=event.bidder, amount=event.amount, at=now)
            return [ScheduleTick(at=deadline)] if deadline is not None and len(self._bids) == 1 else []
        if isinstance(event, Tick) and (deadline is None or now < deadline):
            return []
        self._outcome = self._settle()
        return []

    def required_hold(self, event: Model, current: int, now: int) -> int | None:
        """Escrow: a bid holds its amount."""
        return event.amount if isinstance(event, Bid) else None

    def payments(self) -> list[Payment]:
        """Escrow: the winner pays the price out of their hold."""
        outcome = self._outcome
        if outcome is None or outcome.winner is None or outcome.price is None:
            return []
        return [Payment(outcome.winner, outcome.price)]

    def _settle(self) -> SealedOutcome:
        ranked = rank_bids(list(self._bids.values()))
        if not ranked:
            return SealedOutcome(pricing=self.config.pricing, winner=None, price=None, winning_bid=None,
                                 bid_count=0)
        top = ranked[0]
        if self.config.pricing == "first":
            price = top.amount
        else:
            runner_up = ranked[1].amount if len(ranked) > 1 else 0
            price = max(runner_up, self.config.reserve)
        return SealedOutcome(pricing=self.config.pricing, winner=top.bidder, price=price,
                             winning_bid=top.amount, bid_count=len(ranked))

    def bids(self) -> list[RankedBid]:
        """The bids so far in winning order (for the operator; bidders never see them)."""
        return rank_bids(list(self._bids.values()))
