"""Votes: simple majority, supermajority, Borda and instant-runoff, weighted, with quorum and deadline.

Rules
-----
* ``voters`` maps each eligible voter to a positive integer weight (1 for an
  unweighted vote). Each voter casts at most one ballot; unknown voters,
  unknown options and malformed rankings are refused.
* ``majority`` and ``supermajority`` take a single choice per ballot.
  Majority: an option wins with strictly more than half of the cast weight.
  Supermajority: an option wins with at least ``threshold = (num, den)`` of
  the cast weight (``weight·den >= num·cast``; ``num/den`` must exceed 1/2 so
  at most one option can reach it). Otherwise there is no decision.
* ``borda`` takes a full ranking of every option. With ``n`` options, a
  ballot's k-th choice (from 0) scores ``(n − 1 − k) × weight``. Highest
  total wins.
* ``irv`` (instant runoff) takes a ranking of one or more options. Each round
  counts every ballot for its highest-ranked option still standing; an option
  with strictly more than half of the non-exhausted weight wins; otherwise the
  option with the least weight is eliminated. When a single option remains it
  wins.
* **Tie-break** (deterministic, documented): ties are broken by
  ``tie_break`` order (default: the ``options`` order). A Borda tie goes to the
  option earliest in that order; in IRV the tied option *latest* in that order
  is eliminated (so the earliest survives).
* **Quorum**: if the total cast weight is below ``quorum``, there is no
  decision (``reason = "no_quorum"``) whatever the ballots say.
* The vote closes on an explicit :class:`Close` or a :class:`Tick` at or
  after ``deadline``; ballots at or after the deadline are refused.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from coordinator.mechanisms.base import (
    Action,
    Close,
    Ident,
    Mechanism,
    Model,
    ScheduleTick,
    Tick,
    Time,
)
from coordinator.mechanisms.errors import InvalidConfig, InvalidEvent, MechanismClosed

Weight = Annotated[int, Field(strict=True, gt=0, le=10**9)]


class VoteConfig(Model):
    """A vote's rule, electorate, options and closing conditions."""

    rule: Literal["majority", "supermajority", "borda", "irv"]
    options: list[Ident] = Field(min_length=2)
    voters: dict[Ident, Weight] = Field(min_length=1)
    threshold: tuple[Annotated[int, Field(strict=True, gt=0)], Annotated[int, Field(strict=True, gt=0)]] = (2, 3)
    quorum: Annotated[int, Field(strict=True, ge=0)] = 0
    deadline: Time | None = None
    tie_break: list[Ident] | None = None


class Cast(Model):
    """A single-choice ballot (majority and supermajority rules)."""

    type: Literal["cast"] = "cast"
    voter: Ident
    choice: Ident


class CastRanked(Model):
    """A ranked ballot, most preferred first (Borda and IRV rules)."""

    type: Literal["cast_ranked"] = "cast_ranked"
    voter: Ident
    ranking: list[Ident] = Field(min_length=1)


VoteEvent = Annotated[Cast | CastRanked | Close | Tick, Field(discriminator="type")]


class VoteOutcome(Model):
    """The decision (None if none), why, the cast weight, and the tallies behind it.

    ``rounds`` holds one tally per round: a single round for majority,
    supermajority and Borda; one per elimination round for IRV.
    """

    rule: str
    decision: str | None
    reason: Literal["decided", "no_quorum", "no_majority", "no_ballots"]
    cast_weight: int
    rounds: list[dict[str, int]]
    eliminated: list[str]


class Vote(Mechanism[VoteConfig, VoteOutcome]):
    """A vote under one of four rules (see the module docstring)."""

    kind = "vote"
    family = "vote"
    deadline_fields = ("deadline",)
    closes_field = "deadline"
    config_type = VoteConfig
    event_type = VoteEvent
    outcome_type = VoteOutcome

    def __init__(self, config: VoteConfig | dict[str, object]) -> None:
        super().__init__(config)
        order = self.config.tie_break or self.config.options
        self._priority = {option: index for index, option in enumerate(order)}
        self._ballots: dict[str, list[str]] = {}

    def _check_config(self) -> None:
        options = self.config.options
        if len(set(options)) != len(options):
            raise InvalidConfig("vote config: options contain duplicates")
        if self.config.tie_break is not None and sorted(self.config.tie_break) != sorted(options):
            raise InvalidConfig("vote config: tie_break must be a permutation of options")
        num, den = self.config.threshold
        if self.config.rule == "supermajority" and not (den < 2 * num <= 2 * den):
            raise InvalidConfig("vote config: threshold must be above 1/2 and at most 1")

    def _step(self, event: Cast | CastRanked | Close | Tick, now: int) -> list[Action]:
        deadline = self.config.deadline
        if isinstance(event, Cast | CastRanked):
            if deadline is not None and now >= deadline:
                raise MechanismClosed(f"ballot by {event.voter!r} at {now} after the deadline {deadline}")
            ranking = self._check_ballot(event)
            self._ballots[event.voter] = ranking
            return [ScheduleTick(at=deadline)] if deadline is not None and len(self._ballots) == 1 else []
        if isinstance(event, Tick) and (deadline is None or now < deadline):
            return []
        self._outcome = self._count()
        return []

    def _check_ballot(self, ballot: Cast | CastRanked) -> list[str]:
        if ballot.voter not in self.config.voters:
            raise InvalidEvent(f"unknown voter {ballot.voter!r}")
        if ballot.voter in self._ballots:
            raise InvalidEvent(f"voter {ballot.voter!r} has already voted")
        ranked_rule = self.config.rule in ("borda", "irv")
        if isinstance(ballot, Cast):
            if ranked_rule:
                raise InvalidEvent(f"rule {self.config.rule} needs a ranked ballot from {ballot.voter!r}")
            ranking = [ballot.choice]
        else:
            if not ranked_rule:
                raise InvalidEvent(f"rule {self.config.rule} needs a single-choice ballot from {ballot.voter!r}")
            ranking = list(ballot.ranking)
        unknown = [option for option in ranking if option not in self._priority]
        if unknown:
            raise InvalidEvent(f"ballot by {ballot.voter!r} names unknown option(s) {unknown}")
        if len(set(ranking)) != len(ranking):
            raise InvalidEvent(f"ballot by {ballot.voter!r} ranks an option twice")
        if self.config.rule == "borda" and len(ranking) != len(self.config.options):
            raise InvalidEvent(f"borda ballot by {ballot.voter!r} must rank all {len(self.config.options)} options")
        return ranking

    def _count(self) -> VoteOutcome:
        weights = self.config.voters
        cast = sum(weights[voter] for voter in self._ballots)
        rule = self.config.rule

        def outcome(decision: str | None, reason: Literal["decided", "no_quorum", "no_majority", "no_ballots"],
                    rounds: list[dict[str, int]], eliminated: list[str] | None = None) -> VoteOutcome:
            return VoteOutcome(rule=rule, decision=decision, reason=reason, cast_weight=cast, rounds=rounds,
                               eliminated=eliminated or [])

        if not self._ballots:
            return outcome(None, "no_ballots", [])
        if cast < self.config.quorum:
            return outcome(None, "no_quorum", [])
        if rule == "borda":
            size = len(self.config.options)
            scores = dict.fromkeys(self.config.options, 0)
            for voter, ranking in self._ballots.items():
                for place, option in enumerate(ranking):
                    scores[option] += (size - 1 - place) * weights[voter]
            best = min(scores, key=lambda option: (-scores[option], self._priority[option]))
            return outcome(best, "decided", [scores])
        if rule == "irv":
            return self._instant_runoff(cast)
        tally = dict.fromkeys(self.config.options, 0)
        for voter, ranking in self._ballots.items():
            tally[ranking[0]] += weights[voter]
        num, den = (1, 2) if rule == "majority" else self.config.threshold
        for option in sorted(tally, key=lambda option: (-tally[option], self._priority[option])):
            reached = tally[option] * 2 > cast if rule == "majority" else tally[option] * den >= num * cast
            if reached:
                return outcome(option, "decided", [tally])
        return outcome(None, "no_majority", [tally])

    def _instant_runoff(self, cast: int) -> VoteOutcome:
        weights = self.config.voters
        standing = list(self.config.options)
        rounds: list[dict[str, int]] = []
        eliminated: list[str] = []
        while True:
            tally = dict.fromkeys(standing, 0)
            for voter, ranking in self._ballots.items():
                top = next((option for option in ranking if option in tally), None)
                if top is not None:  # an exhausted ballot counts for nobody
                    tally[top] += weights[voter]
            rounds.append(tally)
            live = sum(tally.values())
            leader = min(standing, key=lambda option: (-tally[option], self._priority[option]))
            if len(standing) == 1 or (live > 0 and tally[leader] * 2 > live):
                return VoteOutcome(rule="irv", decision=leader, reason="decided", cast_weight=cast,
                                   rounds=rounds, eliminated=eliminated)
            if live == 0:
                return VoteOutcome(rule="irv", decision=None, reason="no_majority", cast_weight=cast,
                                   rounds=rounds, eliminated=eliminated)
            loser = max(standing, key=lambda option: (-tally[option], self._priority[option]))
            standing.remove(loser)
            eliminated.append(loser)
