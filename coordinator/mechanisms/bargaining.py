"""Bilateral multi-issue bargaining: alternating offers with concession strategies, and a Nash mediator.

The parties' preference profiles are declared to the mechanism (as automated
negotiators on mabeam do), so it can guarantee individual rationality.

Utilities
---------
Linear additive: ``u(terms) = Σ_issue weight[issue] × score[issue][option]``,
all non-negative integers. Each party has a ``reservation`` utility: what it
gets from disagreement.

Alternating offers (``AlternatingOffers``)
------------------------------------------
* ``parties[0]`` moves first; turns alternate. On its turn a party either
  makes an :class:`Offer` (a complete assignment of one option per issue) or
  accepts the other's standing offer with :class:`AcceptOffer`. Either party
  may :class:`WalkAway` at any time. Moves out of turn are refused.
* An offer worth less than the proposer's reservation, or an acceptance of an
  offer worth less than the acceptor's reservation, is refused: **no agreement
  is ever below either side's reservation value**.
* **Disagreement outcome**: at the deadline (a :class:`Tick` at or after it)
  without agreement, or after a walk-away, the outcome is
  ``agreement=False``, ``terms=None`` and each party gets its reservation.

Concession strategies (time-dependent, Faratin et al. 1998)
-----------------------------------------------------------
A party with best attainable utility ``best`` and reservation ``r`` aims at
``target(t) = best − (best − r) × (t/T)^(1/e)``, ``t`` the time since the
start and ``T`` the time to the deadline. ``e < 1`` is **Boulware** (holds
firm, concedes late), ``e = 1`` **linear**, ``e > 1`` **Conceder**. ``e`` is
a ratio of integers and the comparison ``u >= target(t)`` is done exactly in
integers (``(best − u)^num × T^den <= (best − r)^num × t^den`` for
``e = num/den``), so strategies are deterministic on every machine.
:func:`concession_offer` returns the outcome a strategy offers at ``t``:
the one with the smallest utility still at or above its target (ties: the
first in the canonical outcome order); it accepts an offer at or above its
target. :func:`negotiate` plays two strategies against each other.

Mediator (``MediatedBargaining``)
---------------------------------
The mediator proposes the **Nash bargaining solution** over the discrete
outcome space: the outcome maximising ``(u_a − r_a)(u_b − r_b)`` among those
giving both parties at least their reservation (ties: the first in canonical
order, i.e. options by their listed position, issue by issue). Both parties
accept → agreement; a rejection, the deadline, or an empty agreement zone →
the disagreement outcome.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Annotated, Literal

from pydantic import Field

from coordinator.mechanisms.base import Action, Ident, Mechanism, Model, ScheduleTick, Tick, Time
from coordinator.mechanisms.errors import InvalidConfig, InvalidEvent, MechanismClosed, ProblemTooLarge

Score = Annotated[int, Field(strict=True, ge=0, le=10**6)]
Terms = dict[str, str]


class Issue(Model):
    """One negotiated issue and its options, in canonical order."""

    name: Ident
    options: list[Ident] = Field(min_length=1)


class Profile(Model):
    """A party's linear additive utility and reservation value."""

    party: Ident
    weights: dict[Ident, Score]
    scores: dict[Ident, dict[Ident, Score]]
    reservation: Annotated[int, Field(strict=True, ge=0)]


class BargainingConfig(Model):
    """Issues, the two parties (the first moves first), the deadline and the outcome-space limit."""

    issues: list[Issue] = Field(min_length=1)
    parties: tuple[Profile, Profile]
    starts_at: Time = 0
    deadline: Time
    max_outcomes: Annotated[int, Field(strict=True, gt=0)] = 100_000


class Strategy(Model):
    """A time-dependent concession strategy with exponent ``e = num/den``."""

    num: Annotated[int, Field(strict=True, gt=0, le=20)]
    den: Annotated[int, Field(strict=True, gt=0, le=20)]


BOULWARE = Strategy(num=1, den=5)
LINEAR = Strategy(num=1, den=1)
CONCEDER = Strategy(num=5, den=1)


class Offer(Model):
    """``party`` proposes ``terms`` (one option per issue)."""

    type: Literal["offer"] = "offer"
    party: Ident
    terms: dict[Ident, Ident]


class AcceptOffer(Model):
    """``party`` accepts the other party's standing offer."""

    type: Literal["accept"] = "accept"
    party: Ident


class WalkAway(Model):
    """``party`` ends the negotiation without agreement."""

    type: Literal["walk_away"] = "walk_away"
    party: Ident


class Respond(Model):
    """``party`` accepts or rejects the mediator's proposal."""

    type: Literal["respond"] = "respond"
    party: Ident
    accept: bool


class BargainingOutcome(Model):
    """Agreement terms and utilities, or the disagreement outcome (reservations) and why."""

    agreement: bool
    terms: dict[str, str] | None
    utilities: dict[str, int]
    reason: Literal["accepted", "deadline", "walked_away", "rejected", "no_agreement_zone"]
    at: int
    offers: int


class OfferMade(Action):
    """Forward ``terms`` from ``by`` to ``to``."""

    type: Literal["offer_made"] = "offer_made"
    by: str
    to: str
    terms: dict[str, str]


def utility(profile: Profile, terms: Terms) -> int:
    """The linear additive utility of ``terms`` for ``profile``."""
    return sum(profile.weights[issue] * profile.scores[issue][option] for issue, option in terms.items())


def outcome_space(issues: list[Issue]) -> Iterator[Terms]:
    """Every complete assignment, in canonical order (options by listed position, first issue slowest)."""
    names = [issue.name for issue in issues]
    for combination in itertools.product(*[issue.options for issue in issues]):
        yield dict(zip(names, combination, strict=True))


def acceptable(value: int, best: int, reservation: int, strategy: Strategy, elapsed: int, span: int) -> bool:
    """Exactly whether ``value >= target(t)`` for the strategy (see the module docstring)."""
    if value < reservation:
        return False
    if value >= best:
        return True
    elapsed = min(max(elapsed, 0), span)
    # int ** int is typed as Any (negative exponents give floats); ours are positive, so these are ints.
    conceded: int = (best - value) ** strategy.num * span ** strategy.den
    allowed: int = (best - reservation) ** strategy.num * elapsed ** strategy.den
    return conceded <= allowed


def concession_offer(config: BargainingConfig, profile: Profile, strategy: Strategy, now: int) -> Terms | None:
    """The terms ``profile`` offers at ``now``: least utility at or above its target; None if nothing is."""
    span = max(config.deadline - config.starts_at, 1)
    scored = [(utility(profile, terms), index, terms) for index, terms in enumerate(outcome_space(config.issues))]
    best = max(value for value, _, _ in scored)
    eligible = [entry for entry in scored
                if acceptable(entry[0], best, profile.reservation, strategy, now - config.starts_at, span)]
    if not eligible:
        return None
    return min(eligible, key=lambda entry: (entry[0], entry[1]))[2]


def nash_solution(config: BargainingConfig) -> Terms | None:
    """The Nash bargaining solution over the discrete outcome space, or None if no outcome is acceptable."""
    first, second = config.parties
    best: tuple[int, Terms] | None = None
    for terms in outcome_space(config.issues):
        gain_a, gain_b = utility(first, terms) - first.reservation, utility(second, terms) - second.reservation
        if gain_a >= 0 and gain_b >= 0 and (best is None or gain_a * gain_b > best[0]):
            best = (gain_a * gain_b, terms)
    return None if best is None else best[1]


class _Bargaining(Mechanism[BargainingConfig, BargainingOutcome]):
    """Shared validation and outcomes for both bargaining modes."""

    family = "negotiation"
    deadline_fields = ("starts_at", "deadline")
    closes_field = "deadline"
    opens_field = "starts_at"

    def _check_config(self) -> None:
        config = self.config
        names = [issue.name for issue in config.issues]
        if len(set(names)) != len(names):
            raise InvalidConfig(f"{self.kind} config: issue names repeat")
        if config.parties[0].party == config.parties[1].party:
            raise InvalidConfig(f"{self.kind} config: the two parties need distinct ids")
        if config.deadline <= config.starts_at:
            raise InvalidConfig(f"{self.kind} config: deadline must be after starts_at")
        size = 1
        for issue in config.issues:
            if len(set(issue.options)) != len(issue.options):
                raise InvalidConfig(f"{self.kind} config: options of {issue.name!r} repeat")
            size *= len(issue.options)
        if size > config.max_outcomes:
            raise ProblemTooLarge(f"outcome space of {size} exceeds max_outcomes={config.max_outcomes}")
        for profile in config.parties:
            if set(profile.weights) != set(names) or set(profile.scores) != set(names):
                raise InvalidConfig(f"{self.kind} config: profile of {profile.party!r} must weigh and score "
                                    f"exactly the issues {names}")
            for issue in config.issues:
                if set(profile.scores[issue.name]) != set(issue.options):
                    raise InvalidConfig(f"{self.kind} config: {profile.party!r} must score every option of "
                                        f"{issue.name!r}")

    def _profile(self, party: str) -> Profile:
        for profile in self.config.parties:
            if profile.party == party:
                return profile
        raise InvalidEvent(f"unknown party {party!r}")

    def _disagreement(self, reason: Literal["deadline", "walked_away", "rejected", "no_agreement_zone"],
                      at: int, offers: int) -> BargainingOutcome:
        return BargainingOutcome(agreement=False, terms=None, at=at, offers=offers, reason=reason,
                                 utilities={p.party: p.reservation for p in self.config.parties})

    def _agreement(self, terms: Terms, at: int, offers: int) -> BargainingOutcome:
        return BargainingOutcome(agreement=True, terms=terms, at=at, offers=offers, reason="accepted",
                                 utilities={p.party: utility(p, terms) for p in self.config.parties})


class AlternatingOffers(_Bargaining):
    """Alternating-offers bargaining over several issues with a deadline (see the module docstring)."""

    kind = "alternating_offers"
    config_type = BargainingConfig
    event_type = Annotated[Offer | AcceptOffer | WalkAway | Tick, Field(discriminator="type")]
    outcome_type = BargainingOutcome

    def __init__(self, config: BargainingConfig | dict[str, object]) -> None:
        super().__init__(config)
        self._turn = 0
        self._standing: tuple[int, Terms] | None = None  # (proposer index, terms)
        self._offers = 0

    @property
    def to_move(self) -> str:
        """The party whose turn it is."""
        return self.config.parties[self._turn].party

    @property
    def standing_offer(self) -> Terms | None:
        """The last offer made, which the other party may accept."""
        return None if self._standing is None else dict(self._standing[1])

    def _step(self, event: Offer | AcceptOffer | WalkAway | Tick, now: int) -> list[Action]:
        deadline = self.config.deadline
        if isinstance(event, Tick):
            if now >= deadline:
                self._outcome = self._disagreement("deadline", deadline, self._offers)
                return []
            return [ScheduleTick(at=deadline)]
        profile = self._profile(event.party)
        if now >= deadline:
            raise MechanismClosed(f"{event.type} by {event.party!r} at {now} after the deadline {deadline}")
        if isinstance(event, WalkAway):
            self._outcome = self._disagreement("walked_away", now, self._offers)
            return []
        if now < self.config.starts_at:
            raise InvalidEvent(f"{event.type} by {event.party!r} before the start at {self.config.starts_at}")
        if event.party != self.to_move:
            raise InvalidEvent(f"it is {self.to_move!r}'s turn, not {event.party!r}'s")
        if isinstance(event, AcceptOffer):
            if self._standing is None:
                raise InvalidEvent(f"{event.party!r} has no offer to accept")
            value = utility(profile, self._standing[1])
            if value < profile.reservation:
                raise InvalidEvent(f"{event.party!r} cannot accept terms worth {value}, below its reservation "
                                   f"{profile.reservation}")
            self._outcome = self._agreement(self._standing[1], now, self._offers)
            return []
        terms = self._check_terms(event)
        value = utility(profile, terms)
        if value < profile.reservation:
            raise InvalidEvent(f"{event.party!r} cannot offer terms worth {value} to itself, below its "
                               f"reservation {profile.reservation}")
        self._standing = (self._turn, terms)
        self._offers += 1
        self._turn = 1 - self._turn
        return [OfferMade(by=event.party, to=self.to_move, terms=terms)]

    def _check_terms(self, offer: Offer) -> Terms:
        issues = {issue.name: issue for issue in self.config.issues}
        if set(offer.terms) != set(issues):
            raise InvalidEvent(f"offer by {offer.party!r} must assign exactly the issues {sorted(issues)}")
        for name, option in offer.terms.items():
            if option not in issues[name].options:
                raise InvalidEvent(f"offer by {offer.party!r}: unknown option {option!r} for issue {name!r}")
        return {issue.name: offer.terms[issue.name] for issue in self.config.issues}


def negotiate(config: BargainingConfig | dict[str, object], strategies: tuple[Strategy, Strategy],
              step: int = 1) -> AlternatingOffers:
    """Play two concession strategies against each other, one move every ``step`` ticks, to the end."""
    session = AlternatingOffers(config)
    cfg = session.config
    span = max(cfg.deadline - cfg.starts_at, 1)
    bests = [max(utility(p, t) for t in outcome_space(cfg.issues)) for p in cfg.parties]
    now = cfg.starts_at
    while now < cfg.deadline and not session.concluded:
        index = session._turn
        profile, strategy = cfg.parties[index], strategies[index]
        standing = session.standing_offer
        if standing is not None and acceptable(utility(profile, standing), bests[index], profile.reservation,
                                               strategy, now - cfg.starts_at, span):
            session.apply(AcceptOffer(party=profile.party), now)
            break
        terms = concession_offer(cfg, profile, strategy, now)
        if terms is None:
            session.apply(WalkAway(party=profile.party), now)
            break
        session.apply(Offer(party=profile.party, terms=terms), now)
        now += step
    if not session.concluded:
        session.apply(Tick(), max(now, cfg.deadline))
    return session


class MediatedBargaining(_Bargaining):
    """A mediator proposes the Nash bargaining solution; both parties must accept (see the module docstring)."""

    kind = "mediated_bargaining"
    config_type = BargainingConfig
    event_type = Annotated[Respond | Tick, Field(discriminator="type")]
    outcome_type = BargainingOutcome

    def __init__(self, config: BargainingConfig | dict[str, object]) -> None:
        super().__init__(config)
        self._proposal = nash_solution(self.config)
        self._accepted: set[str] = set()

    def proposal(self) -> Terms | None:
        """The mediator's proposal (the Nash bargaining solution), or None when no outcome is acceptable."""
        return None if self._proposal is None else dict(self._proposal)

    def _step(self, event: Respond | Tick, now: int) -> list[Action]:
        deadline = self.config.deadline
        if self._proposal is None:
            if isinstance(event, Respond):
                raise InvalidEvent("there is no proposal to respond to: the agreement zone is empty")
            self._outcome = self._disagreement("no_agreement_zone", now, 0)
            return []
        if isinstance(event, Tick):
            if now >= deadline:
                self._outcome = self._disagreement("deadline", deadline, 1)
                return []
            return [ScheduleTick(at=deadline)]
        self._profile(event.party)
        if now >= deadline:
            raise MechanismClosed(f"response by {event.party!r} at {now} after the deadline {deadline}")
        if event.party in self._accepted:
            raise InvalidEvent(f"{event.party!r} has already accepted")
        if not event.accept:
            self._outcome = self._disagreement("rejected", now, 1)
            return []
        self._accepted.add(event.party)
        if len(self._accepted) == 2:
            self._outcome = self._agreement(self._proposal, now, 1)
        return []
