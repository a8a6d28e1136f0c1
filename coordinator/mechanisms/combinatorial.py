"""Combinatorial auction with VCG payments: XOR bundle bids, exact winner determination by MILP.

Rules
-----
* Bidders bid on bundles of ``items`` in the **XOR language**: one
  :class:`BundleBid` per bidder lists bundles with amounts, and at most one of
  a bidder's bundles can win. Bundles must be non-empty sets of known items,
  distinct within a bid; amounts are positive integers.
* **Winner determination** maximises the total amount of the accepted bundles
  subject to each item going to at most one bundle and each bidder winning at
  most one bundle. It is an integer program solved by ``scipy.optimize.milp``
  (HiGHS, branch and bound, relative gap 0); the reported welfare is
  recomputed in integers from the chosen bundles. With every amount at most
  ``MAX_AMOUNT`` (10^12) and at most ``max_bundles`` bundles, every objective
  value is an integer below 2^53 and so exact in the solver's float64.
* **Tie rule**: when several allocations reach the optimum, the one chosen is
  lexicographically greatest in the canonical bundle order (bids in the order
  they were accepted, bundles in the order listed): the earliest bundle that
  can be in some optimal allocation is in it, then the next, and so on. A
  uniqueness check (one extra solve) skips this search when the optimum is
  unique, which is the common case.
* **VCG payments**: each winner ``i`` pays ``W(−i) − (W − v_i)``, the welfare
  the others would get without ``i`` minus what they get with ``i``: the
  externality ``i`` imposes. Losers pay nothing.
* **Limits**: more than ``max_bundles`` bundles in total is refused with
  :class:`ProblemTooLarge` when the offending bid arrives (state unchanged);
  more than ``max_items`` items is refused at construction; a solve that hits
  ``time_limit_ms`` (per solve) raises ProblemTooLarge and the close is
  refused, so the operator can cancel or re-run elsewhere. The size limits are
  the deterministic guard; the time limit is a safety net for the machine.

Economic properties (checked in ``tests/unit/mechanisms/test_vcg.py``)
------------------------------------------------------------------------
Allocation is efficient (equal to a brute-force optimum); VCG payments are
non-negative, at most the winner's bid (individual rationality), equal to the
brute-force externality; truthful bidding is dominant for each bidder.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field
from scipy.optimize import Bounds, LinearConstraint, milp

from coordinator.mechanisms.base import (
    Action,
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
from coordinator.mechanisms.errors import (
    InvalidConfig,
    InvalidEvent,
    MechanismClosed,
    MechanismError,
    ProblemTooLarge,
)


class CombinatorialConfig(Model):
    """The items on sale and the limits on the instance."""

    items: list[Ident] = Field(min_length=1)
    bidders: list[Ident] | None = None
    closes_at: Time | None = None
    max_items: Annotated[int, Field(strict=True, gt=0)] = 256
    max_bundles: Annotated[int, Field(strict=True, gt=0)] = 2000
    time_limit_ms: Annotated[int, Field(strict=True, gt=0)] = 30_000


class BundleOffer(Model):
    """One bundle of items and what the bidder would pay for all of them together."""

    items: list[Ident] = Field(min_length=1)
    amount: PositiveAmount


class BundleBid(Model):
    """A bidder's XOR bid: at most one of ``bundles`` may win."""

    type: Literal["bundle_bid"] = "bundle_bid"
    bidder: Ident
    bundles: list[BundleOffer] = Field(min_length=1)


CombinatorialEvent = Annotated[BundleBid | Close | Tick, Field(discriminator="type")]


class Award(Model):
    """A winning bundle and its VCG payment; ``others_welfare_without`` is W(−i)."""

    bidder: str
    items: list[str]
    bid: int
    payment: int
    others_welfare_without: int


class CombinatorialOutcome(Model):
    """The efficient allocation, its welfare, the VCG awards and the seller's revenue."""

    welfare: int
    awards: list[Award]
    revenue: int
    bundle_count: int


class Bundle(Model):
    """A bundle in canonical order: ``index`` is its position, ``bidder`` its owner."""

    index: int
    bidder: str
    items: frozenset[int]
    amount: int


class WinnerDetermination:
    """The integer program over a fixed list of bundles; solves with optional exclusions and fixings."""

    def __init__(self, bundles: list[Bundle], item_count: int, time_limit_ms: int) -> None:
        self.bundles = bundles
        self.time_limit = time_limit_ms / 1000
        bidders = sorted({bundle.bidder for bundle in bundles})
        row_of = {bidder: item_count + index for index, bidder in enumerate(bidders)}
        # Rows: one per item (used at most once) and one per bidder (XOR: at most one bundle).
        matrix = np.zeros((item_count + len(bidders), len(bundles)))
        for column, bundle in enumerate(bundles):
            for item in bundle.items:
                matrix[item, column] = 1
            matrix[row_of[bundle.bidder], column] = 1
        self.matrix = matrix
        self.objective = -np.array([bundle.amount for bundle in bundles], dtype=float)

    def value(self, chosen: list[int]) -> int:
        """The exact integer welfare of a set of bundle indices."""
        return sum(self.bundles[index].amount for index in chosen)

    def solve(self, zero: set[int] | None = None, one: set[int] | None = None,
              extra: list[LinearConstraint] | None = None) -> tuple[int, list[int]] | None:
        """Best welfare and bundles with ``zero`` excluded and ``one`` forced; None if infeasible."""
        count = len(self.bundles)
        if count == 0:
            return 0, []
        lower, upper = np.zeros(count), np.ones(count)
        for index in zero or ():
            upper[index] = 0
        for index in one or ():
            lower[index] = 1
        constraints = [LinearConstraint(self.matrix, -np.inf, 1), *(extra or [])]
        result = milp(self.objective, integrality=np.ones(count), bounds=Bounds(lower, upper),
                      constraints=constraints,
                      options={"time_limit": self.time_limit, "mip_rel_gap": 0.0, "presolve": True})
        if result.status == 2:
            return None
        if result.status == 1:
            raise ProblemTooLarge(f"winner determination hit its time limit of {self.time_limit:g} s "
                                  f"with {count} bundles")
        if result.status != 0 or result.x is None:
            raise MechanismError(f"winner determination failed: {result.message}")
        chosen = [index for index in range(count) if result.x[index] > 0.5]
        return self.value(chosen), chosen

    def efficient(self) -> tuple[int, list[int]]:
        """The optimal welfare and the lexicographically greatest optimal allocation (see module doc)."""
        first = self.solve()
        assert first is not None  # choosing nothing is always feasible
        best, chosen = first
        if not chosen:
            return 0, []
        # A "no-good" cut that excludes exactly this allocation: if the optimum drops, it was unique.
        cut = np.full(len(self.bundles), -1.0)
        cut[chosen] = 1.0
        other = self.solve(extra=[LinearConstraint(cut.reshape(1, -1), -np.inf, len(chosen) - 1)])
        if other is None or other[0] < best:
            return best, chosen
        return best, self._lexicographic(best, chosen)

    def _lexicographic(self, best: int, incumbent: list[int]) -> list[int]:
        ones: set[int] = set()
        zeros: set[int] = set()
        current = set(incumbent)
        for bundle in self.bundles:
            index = bundle.index
            clashes = any(self.bundles[o].bidder == bundle.bidder or self.bundles[o].items & bundle.items
                          for o in ones)
            if clashes:
                zeros.add(index)
                continue
            if index in current:
                ones.add(index)
                continue
            trial = self.solve(zero=zeros, one=ones | {index})
            if trial is not None and trial[0] == best:
                ones.add(index)
                current = set(trial[1])
            else:
                zeros.add(index)
        return sorted(ones)


class CombinatorialAuction(Mechanism[CombinatorialConfig, CombinatorialOutcome]):
    """A sealed-bid combinatorial auction with XOR bids and VCG payments (see the module docstring)."""

    kind = "combinatorial"
    family = "auction"
    deadline_fields = ("closes_at",)
    closes_field = "closes_at"
    config_type = CombinatorialConfig
    event_type = CombinatorialEvent
    outcome_type = CombinatorialOutcome

    def __init__(self, config: CombinatorialConfig | dict[str, object]) -> None:
        super().__init__(config)
        self._item_index = {item: index for index, item in enumerate(self.config.items)}
        self._bundles: list[Bundle] = []
        self._bidders: set[str] = set()

    def _check_config(self) -> None:
        items = self.config.items
        if len(set(items)) != len(items):
            raise InvalidConfig("combinatorial config: items contain duplicates")
        if len(items) > self.config.max_items:
            raise ProblemTooLarge(f"{len(items)} items exceed max_items={self.config.max_items}")

    def required_hold(self, event: Model, current: int, now: int) -> int | None:
        """Escrow: the largest bundle amount (XOR bids win at most one bundle)."""
        return max(bundle.amount for bundle in event.bundles) if isinstance(event, BundleBid) else None

    def payments(self) -> list[Payment]:
        """Escrow: each awarded bidder pays their payment out of their hold."""
        outcome = self._outcome
        return [] if outcome is None else [Payment(award.bidder, award.payment) for award in outcome.awards]

    def _step(self, event: BundleBid | Close | Tick, now: int) -> list[Action]:
        deadline = self.config.closes_at
        if isinstance(event, BundleBid):
            if deadline is not None and now >= deadline:
                raise MechanismClosed(f"bid by {event.bidder!r} at {now} after closing time {deadline}")
            new = self._check_bid(event)
            self._bundles.extend(new)
            self._bidders.add(event.bidder)
            return [ScheduleTick(at=deadline)] if deadline is not None and len(self._bidders) == 1 else []
        if isinstance(event, Tick) and (deadline is None or now < deadline):
            return []
        self._outcome = self._settle()
        return []

    def _check_bid(self, bid: BundleBid) -> list[Bundle]:
        if self.config.bidders is not None and bid.bidder not in self.config.bidders:
            raise InvalidEvent(f"unknown bidder {bid.bidder!r}")
        if bid.bidder in self._bidders:
            raise InvalidEvent(f"bidder {bid.bidder!r} has already bid; XOR bids are submitted once")
        total = len(self._bundles) + len(bid.bundles)
        if total > self.config.max_bundles:
            raise ProblemTooLarge(f"bid by {bid.bidder!r} brings the bundle count to {total}, past "
                                  f"max_bundles={self.config.max_bundles}")
        seen: set[frozenset[int]] = set()
        bundles = []
        for position, offer in enumerate(bid.bundles):
            unknown = [item for item in offer.items if item not in self._item_index]
            if unknown:
                raise InvalidEvent(f"bundle {position} of {bid.bidder!r} names unknown item(s) {unknown}")
            items = frozenset(self._item_index[item] for item in offer.items)
            if len(items) != len(offer.items):
                raise InvalidEvent(f"bundle {position} of {bid.bidder!r} lists an item twice")
            if items in seen:
                raise InvalidEvent(f"bundle {position} of {bid.bidder!r} repeats an earlier bundle")
            seen.add(items)
            bundles.append(Bundle(index=len(self._bundles) + position, bidder=bid.bidder, items=items,
                                  amount=offer.amount))
        return bundles

    def _settle(self) -> CombinatorialOutcome:
        problem = WinnerDetermination(self._bundles, len(self.config.items), self.config.time_limit_ms)
        welfare, chosen = problem.efficient()
        awards = []
        for index in chosen:
            bundle = self._bundles[index]
            without = problem.solve(zero={b.index for b in self._bundles if b.bidder == bundle.bidder})
            assert without is not None
            payment = without[0] - (welfare - bundle.amount)
            names = sorted(self.config.items[item] for item in bundle.items)
            awards.append(Award(bidder=bundle.bidder, items=names, bid=bundle.amount, payment=payment,
                                others_welfare_without=without[0]))
        return CombinatorialOutcome(welfare=welfare, awards=awards, revenue=sum(a.payment for a in awards),
                                    bundle_count=len(self._bundles))
