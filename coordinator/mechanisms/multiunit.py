"""Multi-unit sealed-bid auctions of ``units`` identical units: uniform-price, pay-as-bid, Vickrey.

Rules
-----
* Each bidder submits one bid: a list of **marginal** amounts, one per unit,
  non-increasing (the first unit is worth at least as much as the second),
  at most ``units`` long, each at least the reserve. The i-th entry is what
  the bidder offers for its i-th unit.
* **Allocation**: all unit bids are ranked by amount (highest first), then by
  the time the bid was applied (earliest first), then by bidder id, then by
  the unit's position; the top ``units`` win (fewer if fewer were bid, the
  rest stay unsold). Because marginals are non-increasing, a bidder always
  wins a prefix of its list.
* **Uniform price** (every winner pays the same price per unit):
  ``uniform_rule="highest_losing"`` (default) charges the highest losing unit
  bid, or the reserve when no unit bid lost; ``"lowest_winning"`` charges the
  lowest winning unit bid.
* **Pay-as-bid** (discriminatory): each winner pays the sum of its winning
  marginal bids.
* **Multi-unit Vickrey**: a winner of ``j`` units pays the externality it
  imposes: the sum of the ``j`` highest unit bids among the other bidders'
  *losing* bids, treating the seller as holding ``units`` extra bids at the
  reserve (so no unit sells below the reserve).

Properties (``tests/unit/mechanisms/test_multiunit.py``): every payment lies
between ``reserve × units won`` and the winner's own winning bids; Vickrey
payments equal the brute-force externality; at most ``units`` are sold.
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


class MultiUnitConfig(Model):
    """The number of units, the pricing rule and the reserve per unit."""

    units: Annotated[int, Field(strict=True, gt=0, le=1_000_000)]
    pricing: Literal["uniform", "pay_as_bid", "vickrey"]
    uniform_rule: Literal["highest_losing", "lowest_winning"] = "highest_losing"
    reserve: Amount = 0
    closes_at: Time | None = None
    bidders: list[Ident] | None = None


class MultiUnitBid(Model):
    """A bidder's non-increasing marginal amounts, one per unit wanted."""

    type: Literal["bid"] = "bid"
    bidder: Ident
    marginal: list[PositiveAmount] = Field(min_length=1)


MultiUnitEvent = Annotated[MultiUnitBid | Close | Tick, Field(discriminator="type")]


class UnitAward(Model):
    """What one winner gets and pays in total."""

    bidder: str
    units: int
    payment: int


class MultiUnitOutcome(Model):
    """The awards, the uniform price (uniform pricing only), units sold and revenue."""

    pricing: str
    awards: list[UnitAward]
    uniform_price: int | None
    units_sold: int
    revenue: int


class _Placed(Model):
    bidder: str
    marginal: list[int]
    at: int


class MultiUnitAuction(Mechanism[MultiUnitConfig, MultiUnitOutcome]):
    """A multi-unit sealed-bid auction (see the module docstring for the pricing rules)."""

    kind = "multi_unit"
    family = "auction"
    deadline_fields = ("closes_at",)
    closes_field = "closes_at"
    config_type = MultiUnitConfig
    event_type = MultiUnitEvent
    outcome_type = MultiUnitOutcome

    def __init__(self, config: MultiUnitConfig | dict[str, object]) -> None:
        super().__init__(config)
        self._bids: dict[str, _Placed] = {}

    def required_hold(self, event: Model, current: int, now: int) -> int | None:
        """Escrow: a bid holds the sum of its marginal bids (what winning every unit could cost)."""
        return sum(event.marginal) if isinstance(event, MultiUnitBid) else None

    def payments(self) -> list[Payment]:
        """Escrow: each awarded bidder pays their payment out of their hold."""
        outcome = self._outcome
        return [] if outcome is None else [Payment(award.bidder, award.payment) for award in outcome.awards]

    def _step(self, event: MultiUnitBid | Close | Tick, now: int) -> list[Action]:
        deadline = self.config.closes_at
        if isinstance(event, MultiUnitBid):
            if deadline is not None and now >= deadline:
                raise MechanismClosed(f"bid by {event.bidder!r} at {now} after closing time {deadline}")
            self._check_bid(event)
            self._bids[event.bidder] = _Placed(bidder=event.bidder, marginal=list(event.marginal), at=now)
            return [ScheduleTick(at=deadline)] if deadline is not None and len(self._bids) == 1 else []
        if isinstance(event, Tick) and (deadline is None or now < deadline):
            return []
        self._outcome = self._settle()
        return []

    def _check_bid(self, bid: MultiUnitBid) -> None:
        if self.config.bidders is not None and bid.bidder not in self.config.bidders:
            raise InvalidEvent(f"unknown bidder {bid.bidder!r}")
        if bid.bidder in self._bids:
            raise InvalidEvent(f"bidder {bid.bidder!r} has already bid; sealed bids are final")
        if len(bid.marginal) > self.config.units:
            raise InvalidEvent(f"bid by {bid.bidder!r} asks for {len(bid.marginal)} units; only "
                               f"{self.config.units} are on sale")
        if any(later > earlier for earlier, later in zip(bid.marginal, bid.marginal[1:], strict=False)):
            raise InvalidEvent(f"marginal bids of {bid.bidder!r} must be non-increasing")
        if bid.marginal[-1] < self.config.reserve:
            raise InvalidEvent(f"bid by {bid.bidder!r} has a unit bid {bid.marginal[-1]} below the reserve "
                               f"{self.config.reserve}")

    def _settle(self) -> MultiUnitOutcome:
        units, reserve = self.config.units, self.config.reserve
        ranked = sorted(((amount, placed.at, placed.bidder, position)
                         for placed in self._bids.values() for position, amount in enumerate(placed.marginal)),
                        key=lambda entry: (-entry[0], entry[1], entry[2], entry[3]))
        winning, losing = ranked[:units], ranked[units:]
        won: dict[str, int] = {}
        for _, _, bidder, _ in winning:
            won[bidder] = won.get(bidder, 0) + 1
        price: int | None = None
        if self.config.pricing == "uniform" and winning:
            if self.config.uniform_rule == "highest_losing":
                price = max(losing[0][0], reserve) if losing else reserve
            else:
                price = winning[-1][0]
        awards = []
        for bidder in sorted(won, key=lambda name: (self._bids[name].at, name)):
            count = won[bidder]
            if price is not None:
                payment = price * count
            elif self.config.pricing == "pay_as_bid":
                payment = sum(self._bids[bidder].marginal[:count])
            else:
                # Others' losing unit bids plus the seller's reserve bids; the top `count` are displaced.
                displaced = sorted([entry[0] for entry in losing if entry[2] != bidder] + [reserve] * units,
                                   reverse=True)
                payment = sum(displaced[:count])
            awards.append(UnitAward(bidder=bidder, units=count, payment=payment))
        return MultiUnitOutcome(pricing=self.config.pricing, awards=awards, uniform_price=price,
                                units_sold=len(winning), revenue=sum(a.payment for a in awards))
