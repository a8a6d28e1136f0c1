"""Bargaining: individual rationality, documented disagreement, concession strategies, Nash mediator."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mechanism_helpers import FEW, PROPERTY, rejects

from coordinator.mechanisms.bargaining import (
    BOULWARE,
    CONCEDER,
    LINEAR,
    AcceptOffer,
    AlternatingOffers,
    BargainingConfig,
    MediatedBargaining,
    Offer,
    Respond,
    Strategy,
    WalkAway,
    concession_offer,
    nash_solution,
    negotiate,
    outcome_space,
    utility,
)
from coordinator.mechanisms.base import Tick
from coordinator.mechanisms.errors import InvalidConfig, InvalidEvent, MechanismClosed, ProblemTooLarge

ISSUES = [{"name": "price", "options": ["low", "mid", "high"]}, {"name": "delivery", "options": ["fast", "slow"]}]


def profile(party: str, price: list[int], delivery: list[int], weights: tuple[int, int], reservation: int) -> Any:
    return {"party": party, "weights": {"price": weights[0], "delivery": weights[1]},
            "scores": {"price": dict(zip(["low", "mid", "high"], price, strict=True)),
                       "delivery": dict(zip(["fast", "slow"], delivery, strict=True))},
            "reservation": reservation}


# Buyer likes low prices and fast delivery; seller the opposite, caring more about price.
BUYER = profile("buyer", [10, 5, 0], [10, 0], (3, 1), 15)
SELLER = profile("seller", [0, 6, 10], [0, 10], (4, 1), 20)
CONFIG = {"issues": ISSUES, "parties": [BUYER, SELLER], "deadline": 100}


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    def random_profile(party: str) -> Any:
        return profile(party, draw(st.lists(st.integers(0, 10), min_size=3, max_size=3)),
                       draw(st.lists(st.integers(0, 10), min_size=2, max_size=2)),
                       (draw(st.integers(0, 5)), draw(st.integers(0, 5))), draw(st.integers(0, 40)))
    return {"issues": ISSUES, "parties": [random_profile("a"), random_profile("b")],
            "deadline": draw(st.integers(2, 60))}


strategies_ = st.sampled_from([BOULWARE, LINEAR, CONCEDER, Strategy(num=2, den=3)])


@PROPERTY
@given(config=configs(), first=strategies_, second=strategies_, step=st.integers(1, 7))
def test_no_agreement_below_reservation_and_deadline_disagreement(config: dict[str, Any], first: Strategy,
                                                                   second: Strategy, step: int) -> None:
    session = negotiate(config, (first, second), step)
    outcome = session.outcome()
    assert outcome is not None
    parties = session.config.parties
    if outcome.agreement:
        assert outcome.terms is not None
        for party in parties:
            assert utility(party, outcome.terms) >= party.reservation
            assert outcome.utilities[party.party] == utility(party, outcome.terms)
    else:
        # The documented disagreement outcome: no terms, each side keeps its reservation value.
        assert outcome.terms is None and outcome.reason in ("deadline", "walked_away")
        assert outcome.utilities == {p.party: p.reservation for p in parties}


@PROPERTY
@given(config=configs())
def test_nash_mediator_is_individually_rational_and_pareto_optimal(config: dict[str, Any]) -> None:
    cfg = BargainingConfig.model_validate(config)
    a, b = cfg.parties
    proposal = nash_solution(cfg)
    zone = [t for t in outcome_space(cfg.issues) if utility(a, t) >= a.reservation and utility(b, t) >= b.reservation]
    if proposal is None:
        assert zone == []
        return
    gain = (utility(a, proposal) - a.reservation) * (utility(b, proposal) - b.reservation)
    assert gain == max((utility(a, t) - a.reservation) * (utility(b, t) - b.reservation) for t in zone)
    if gain > 0:
        assert not any(utility(a, t) >= utility(a, proposal) and utility(b, t) >= utility(b, proposal)
                       and (utility(a, t), utility(b, t)) != (utility(a, proposal), utility(b, proposal))
                       for t in zone)


@FEW
@given(now=st.integers(0, 100))
def test_boulware_concedes_no_faster_than_conceder(now: int) -> None:
    cfg = BargainingConfig.model_validate(CONFIG)
    buyer = cfg.parties[0]
    hard = concession_offer(cfg, buyer, BOULWARE, now)
    soft = concession_offer(cfg, buyer, CONCEDER, now)
    line = concession_offer(cfg, buyer, LINEAR, now)
    assert hard is not None and soft is not None and line is not None
    assert utility(buyer, hard) >= utility(buyer, line) >= utility(buyer, soft)


def test_hand_worked_negotiation() -> None:
    # Buyer: price low/mid/high = 30/15/0, delivery fast/slow = 10/0; seller: price 0/24/40, delivery 0/10.
    session = negotiate(CONFIG, (LINEAR, LINEAR), step=10)
    outcome = session.outcome()
    assert outcome is not None and outcome.agreement
    assert outcome.terms == {"price": "mid", "delivery": "fast"}
    assert outcome.utilities == {"buyer": 25, "seller": 24}
    # The mediator's Nash solution: (25-15)*(24-20)=40 beats mid/slow (15-15)*(34-20)=0 and low/fast (40-15)*0.
    assert nash_solution(BargainingConfig.model_validate(CONFIG)) == {"price": "mid", "delivery": "fast"}


def test_alternating_offers_validation_and_walk_away() -> None:
    session = AlternatingOffers(CONFIG)
    rejects(session, Offer(party="seller", terms={"price": "high", "delivery": "slow"}), 1, InvalidEvent, "turn")
    rejects(session, Offer(party="buyer", terms={"price": "low"}), 1, InvalidEvent, "exactly the issues")
    rejects(session, Offer(party="buyer", terms={"price": "free", "delivery": "fast"}), 1, InvalidEvent,
            "unknown option")
    rejects(session, Offer(party="buyer", terms={"price": "high", "delivery": "slow"}), 1, InvalidEvent,
            "below its reservation")
    rejects(session, AcceptOffer(party="buyer"), 1, InvalidEvent, "no offer")
    rejects(session, Offer(party="ghost", terms={"price": "low", "delivery": "fast"}), 1, InvalidEvent,
            "unknown party")
    session.apply(Offer(party="buyer", terms={"price": "low", "delivery": "fast"}), 1)
    rejects(session, AcceptOffer(party="seller"), 2, InvalidEvent, "below its reservation")
    rejects(session, Offer(party="seller", terms={"price": "high", "delivery": "slow"}), 100, MechanismClosed)
    session.apply(WalkAway(party="seller"), 3)
    outcome = session.outcome()
    assert outcome is not None and (outcome.agreement, outcome.reason) == (False, "walked_away")


def test_deadline_disagreement_and_mediator() -> None:
    session = AlternatingOffers(CONFIG)
    session.apply(Tick(), 100)
    assert session.outcome().reason == "deadline"  # type: ignore[union-attr]
    mediated = MediatedBargaining(CONFIG)
    assert mediated.proposal() == {"price": "mid", "delivery": "fast"}
    mediated.apply(Respond(party="seller", accept=True), 1)
    rejects(mediated, Respond(party="seller", accept=True), 2, InvalidEvent, "already accepted")
    mediated.apply(Respond(party="buyer", accept=True), 2)
    assert mediated.outcome().utilities == {"buyer": 25, "seller": 24}  # type: ignore[union-attr]
    rejected = MediatedBargaining(CONFIG)
    rejected.apply(Respond(party="buyer", accept=False), 1)
    assert rejected.outcome().reason == "rejected"  # type: ignore[union-attr]


def test_config_validation() -> None:
    with pytest.raises(InvalidConfig, match="score every option"):
        AlternatingOffers({**CONFIG, "parties": [BUYER, {**SELLER, "scores": {**SELLER["scores"], "price": {}}}]})
    with pytest.raises(InvalidConfig, match="distinct"):
        AlternatingOffers({**CONFIG, "parties": [BUYER, BUYER]})
    with pytest.raises(ProblemTooLarge, match="max_outcomes"):
        AlternatingOffers({**CONFIG, "max_outcomes": 5})
