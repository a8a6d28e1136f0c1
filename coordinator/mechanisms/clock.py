"""Clock auctions for one item: English (ascending) and Dutch (descending).

Time is injected: the price of a Dutch clock and the closing of an English
auction are functions of the ``now`` passed with each event, and a
:class:`Tick` lets time pass with no other input. Each accepted event that
moves a deadline returns a :class:`ScheduleTick` naming when to tick next.

English
-------
* Opens at ``opens_at``. The first bid must be at least ``start_price``; each
  later bid must beat the standing bid by at least ``min_increment``. The
  standing high bidder cannot outbid themself. Unknown bidders (when
  ``bidders`` is set) and bids before opening are refused.
* Closes after ``quiet_period`` ticks with no new high bid (counted from the
  opening, then from each accepted bid) or at ``hard_deadline``, whichever is
  first; a bid at or after that moment is refused. The closing is recorded by
  a Tick at or after it.
* The standing high bidder wins and pays their last bid; no bid, no sale.
* Property: with private values and straightforward bidding (raise by one
  increment while the price is below your value), the price ends within one
  increment of the second-highest value.

Dutch
-----
* The clock shows ``start_price − decrement × k`` during step ``k``, i.e. for
  ``opens_at + k·tick_interval <= now < opens_at + (k+1)·tick_interval``, for
  every ``k`` whose price is at or above ``floor``. After the last such step
  the auction expires unsold (recorded by a Tick).
* The first :class:`Accept` wins the item at the clock's current price; later
  acceptances are refused because the auction is closed. The price is always
  at or above the floor.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from coordinator.mechanisms.base import (
    Action,
    Amount,
    Ident,
    Mechanism,
    Model,
    Payment,
    PositiveAmount,
    ScheduleTick,
    Tick,
    Time,
)
from coordinator.mechanisms.errors import InvalidConfig, InvalidEvent, MechanismClosed


class ClockOutcome(Model):
    """Who won at what price, when the auction closed and why."""

    winner: str | None
    price: int | None
    closed_at: int
    reason: Literal["quiet_period", "hard_deadline", "accepted", "expired"]


class EnglishConfig(Model):
    """An ascending auction's rules."""

    start_price: Amount
    min_increment: PositiveAmount
    opens_at: Time = 0
    quiet_period: Annotated[int, Field(strict=True, gt=0)]
    hard_deadline: Time
    bidders: list[Ident] | None = None


class RaiseBid(Model):
    """An ascending bid of ``amount`` by ``bidder``."""

    type: Literal["bid"] = "bid"
    bidder: Ident
    amount: PositiveAmount


EnglishEvent = Annotated[RaiseBid | Tick, Field(discriminator="type")]


class NewHighBid(Action):
    """Announce the new standing bid and when the auction will close if nobody beats it."""

    type: Literal["new_high_bid"] = "new_high_bid"
    bidder: str
    amount: int
    closes_at: int


class EnglishAuction(Mechanism[EnglishConfig, ClockOutcome]):
    """An ascending (English) auction with a quiet period and a hard deadline."""

    kind = "english"
    family = "auction"
    deadline_fields = ("opens_at", "hard_deadline")
    closes_field = "hard_deadline"
    opens_field = "opens_at"
    config_type = EnglishConfig
    event_type = EnglishEvent
    outcome_type = ClockOutcome

    def __init__(self, config: EnglishConfig | dict[str, object]) -> None:
        super().__init__(config)
        self._high_bidder: str | None = None
        self._high_bid: int | None = None
        self._last_activity = self.config.opens_at

    def _check_config(self) -> None:
        if self.config.hard_deadline <= self.config.opens_at:
            raise InvalidConfig("english config: hard_deadline must be after opens_at")

    def closes_at(self) -> int:
        """When the auction closes unless a new high bid arrives first."""
        return min(self._last_activity + self.config.quiet_period, self.config.hard_deadline)

    def minimum_bid(self) -> int:
        """The smallest bid that would be accepted now."""
        if self._high_bid is None:
            return max(self.config.start_price, 1)
        return self._high_bid + self.config.min_increment

    def standing(self) -> tuple[str | None, int | None]:
        """The standing high bidder and bid."""
        return self._high_bidder, self._high_bid

    def status_view(self, now: int) -> dict[str, Any]:
        """The standing bid, when the auction closes, and the smallest acceptable bid."""
        return {"high_bidder": self._high_bidder, "high_bid": self._high_bid, "closes_at": self.closes_at(),
                "minimum_bid": self.minimum_bid()}

    def required_hold(self, event: Model, current: int, now: int) -> int | None:
        """Escrow: a bidder holds their highest bid."""
        return max(current, event.amount) if isinstance(event, RaiseBid) else None

    def payments(self) -> list[Payment]:
        """Escrow: the winner pays the price out of their hold."""
        outcome = self._outcome
        if outcome is None or outcome.winner is None or outcome.price is None:
            return []
        return [Payment(outcome.winner, outcome.price)]

    def _step(self, event: RaiseBid | Tick, now: int) -> list[Action]:
        closing = self.closes_at()
        if isinstance(event, Tick):
            if now >= closing:
                reason: Literal["quiet_period", "hard_deadline"] = (
                    "hard_deadline" if closing == self.config.hard_deadline else "quiet_period")
                self._outcome = ClockOutcome(winner=self._high_bidder, price=self._high_bid,
                                             closed_at=closing, reason=reason)
                return []
            return [ScheduleTick(at=closing)]
        if now < self.config.opens_at:
            raise InvalidEvent(f"bid by {event.bidder!r} at {now} before opening at {self.config.opens_at}")
        if now >= closing:
            raise MechanismClosed(f"bid by {event.bidder!r} at {now} after the auction closed at {closing}")
        if self.config.bidders is not None and event.bidder not in self.config.bidders:
            raise InvalidEvent(f"unknown bidder {event.bidder!r}")
        if event.bidder == self._high_bidder:
            raise InvalidEvent(f"bidder {event.bidder!r} already holds the high bid")
        if event.amount < self.minimum_bid():
            what = "start price" if self._high_bid is None else "standing bid plus the minimum increment"
            raise InvalidEvent(f"bid {event.amount} by {event.bidder!r} is below the {what} "
                               f"({self.minimum_bid()})")
        self._high_bidder, self._high_bid, self._last_activity = event.bidder, event.amount, now
        closing = self.closes_at()
        return [NewHighBid(bidder=event.bidder, amount=event.amount, closes_at=closing),
                ScheduleTick(at=closing)]


class DutchConfig(Model):
    """A descending auction's rules."""

    start_price: PositiveAmount
    decrement: PositiveAmount
    tick_interval: Annotated[int, Field(strict=True, gt=0)]
    floor: Amount
    opens_at: Time = 0
    bidders: list[Ident] | None = None


class Accept(Model):
    """``bidder`` takes the item at the clock's current price."""

    type: Literal["accept"] = "accept"
    bidder: Ident


DutchEvent = Annotated[Accept | Tick, Field(discriminator="type")]


class ClockPrice(Action):
    """Announce the clock's price, valid until ``until`` (exclusive)."""

    type: Literal["clock_price"] = "clock_price"
    price: int
    until: int


class DutchAuction(Mechanism[DutchConfig, ClockOutcome]):
    """A descending (Dutch) clock auction with a floor."""

    kind = "dutch"
    family = "auction"
    deadline_fields = ("opens_at",)
    opens_field = "opens_at"
    config_type = DutchConfig
    event_type = DutchEvent
    outcome_type = ClockOutcome

    def _check_config(self) -> None:
        if self.config.floor > self.config.start_price:
            raise InvalidConfig("dutch config: floor is above start_price")

    @property
    def last_step(self) -> int:
        """The index of the last clock step whose price is at or above the floor."""
        return (self.config.start_price - self.config.floor) // self.config.decrement

    def expires_at(self) -> int:
        """When the clock passes the floor and the item goes unsold."""
        return self.config.opens_at + (self.last_step + 1) * self.config.tick_interval

    def price_at(self, now: int) -> int | None:
        """The clock price at ``now``; None before opening or after expiry."""
        if now < self.config.opens_at or now >= self.expires_at():
            return None
        step = (now - self.config.opens_at) // self.config.tick_interval
        return self.config.start_price - step * self.config.decrement

    def status_view(self, now: int) -> dict[str, Any]:
        """The clock price now and when the clock expires."""
        return {"price": self.price_at(now), "expires_at": self.expires_at()}

    def required_hold(self, event: Model, current: int, now: int) -> int | None:
        """Escrow: accepting holds the clock price at the time of the accept."""
        if not isinstance(event, Accept):
            return None
        price = self.price_at(now)
        return price if price is not None else current

    def payments(self) -> list[Payment]:
        """Escrow: the winner pays the price out of their hold."""
        outcome = self._outcome
        if outcome is None or outcome.winner is None or outcome.price is None:
            return []
        return [Payment(outcome.winner, outcome.price)]

    def _step(self, event: Accept | Tick, now: int) -> list[Action]:
        price = self.price_at(now)
        if isinstance(event, Tick):
            if now >= self.expires_at():
                self._outcome = ClockOutcome(winner=None, price=None, closed_at=self.expires_at(),
                                             reason="expired")
                return []
            if price is None:
                return [ScheduleTick(at=self.config.opens_at)]
            step_end = now - (now - self.config.opens_at) % self.config.tick_interval + self.config.tick_interval
            return [ClockPrice(price=price, until=step_end), ScheduleTick(at=step_end)]
        if self.config.bidders is not None and event.bidder not in self.config.bidders:
            raise InvalidEvent(f"unknown bidder {event.bidder!r}")
        if now < self.config.opens_at:
            raise InvalidEvent(f"accept by {event.bidder!r} at {now} before opening at {self.config.opens_at}")
        if price is None:
            raise MechanismClosed(f"accept by {event.bidder!r} at {now} after the clock expired at "
                                  f"{self.expires_at()}")
        self._outcome = ClockOutcome(winner=event.bidder, price=price, closed_at=now, reason="accepted")
        return []
