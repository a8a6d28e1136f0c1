"""Votes: hand-worked Borda and IRV tables, majority thresholds, weights, quorum, deadline, validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mechanism_helpers import PROPERTY, rejects

from coordinator.mechanisms.base import Close, Tick
from coordinator.mechanisms.errors import InvalidConfig, InvalidEvent, MechanismClosed
from coordinator.mechanisms.voting import Cast, CastRanked, Vote, VoteOutcome


def ranked(rule: str, options: str, ballots: list[tuple[str, int]], **extra: object) -> VoteOutcome:
    """Run a ranked vote; ballots are (ranking as letters, how many voters cast it)."""
    voters = {}
    events = []
    for ranking, count in ballots:
        for _ in range(count):
            voter = f"v{len(voters)}"
            voters[voter] = 1
            events.append(CastRanked(voter=voter, ranking=list(ranking)))
    vote = Vote({"rule": rule, "options": list(options), "voters": voters, **extra})
    for index, event in enumerate(events):
        vote.apply(event, index)
    vote.apply(Close(), len(events))
    result = vote.outcome()
    assert result is not None
    return result


# Hand-worked: 4 options, 100 voters (the "Tennessee capital" example: M=Memphis, N=Nashville,
# C=Chattanooga, K=Knoxville). Borda scores: M 42*3=126, N 26*3+42*2+32*1=194 ... computed below.
TENNESSEE = [("MNCK", 42), ("NCKM", 26), ("CKNM", 15), ("KCNM", 17)]


def test_borda_hand_worked_tennessee() -> None:
    result = ranked("borda", "MNCK", TENNESSEE)
    # M: 42*3 = 126; N: 42*2 + 26*3 + 15*1 + 17*1 = 194; C: 42*1 + 26*2 + 15*3 + 17*2 = 173;
    # K: 26*1 + 15*2 + 17*3 = 107.
    assert result.rounds == [{"M": 126, "N": 194, "C": 173, "K": 107}]
    assert result.decision == "N"


def test_irv_hand_worked_tennessee() -> None:
    result = ranked("irv", "MNCK", TENNESSEE)
    # Round 1: M 42, N 26, C 15, K 17 -> C out; round 2: K 32 -> N out (26); round 3: M 42, K 58 -> K.
    assert result.rounds == [{"M": 42, "N": 26, "C": 15, "K": 17}, {"M": 42, "N": 26, "K": 32},
                             {"M": 42, "K": 58}]
    assert result.eliminated == ["C", "N"]
    assert result.decision == "K"


def test_irv_partial_ballots_exhaust_and_ties_eliminate_latest_in_order() -> None:
    # A 2, B 2, C 1 (C's ballot exhausts when C goes); then A 2, B 2 tie: B (later) eliminated -> A.
    result = ranked("irv", "ABC", [("A", 2), ("B", 2), ("C", 1)])
    assert result.eliminated == ["C", "B"] and result.decision == "A"
    # With tie_break reversed, A is eliminated instead.
    assert ranked("irv", "ABC", [("A", 2), ("B", 2), ("C", 1)], tie_break=["C", "B", "A"]).decision == "B"


def test_borda_tie_goes_to_earliest_in_tie_break_order() -> None:
    assert ranked("borda", "AB", [("AB", 1), ("BA", 1)]).decision == "A"
    assert ranked("borda", "AB", [("AB", 1), ("BA", 1)], tie_break=["B", "A"]).decision == "B"


def single(rule: str, votes: dict[str, tuple[int, str]], **extra: object) -> VoteOutcome:
    vote = Vote({"rule": rule, "options": ["yes", "no"], "voters": {v: w for v, (w, _) in votes.items()},
                 **extra})
    for index, (voter, (_, choice)) in enumerate(votes.items()):
        vote.apply(Cast(voter=voter, choice=choice), index)
    vote.apply(Close(), len(votes))
    result = vote.outcome()
    assert result is not None
    return result


@pytest.mark.parametrize(("rule", "votes", "extra", "decision", "reason"), [
    ("majority", {"a": (1, "yes"), "b": (1, "yes"), "c": (1, "no")}, {}, "yes", "decided"),
    ("majority", {"a": (1, "yes"), "b": (1, "no")}, {}, None, "no_majority"),  # exactly half is not a majority
    ("majority", {"a": (3, "no"), "b": (1, "yes"), "c": (1, "yes")}, {}, "no", "decided"),  # weights
    ("supermajority", {"a": (1, "yes"), "b": (1, "yes"), "c": (1, "no")}, {}, "yes", "decided"),  # 2/3 reached
    ("supermajority", {"a": (1, "yes"), "b": (1, "yes"), "c": (1, "no"), "d": (1, "no")}, {}, None,
     "no_majority"),
    ("supermajority", {"a": (3, "yes"), "b": (1, "no")}, {"threshold": (3, 4)}, "yes", "decided"),
    ("majority", {"a": (1, "yes")}, {"quorum": 2}, None, "no_quorum"),
])
def test_single_choice_rules(rule: str, votes: dict[str, tuple[int, str]], extra: dict[str, object],
                             decision: str | None, reason: str) -> None:
    result = single(rule, votes, **extra)
    assert (result.decision, result.reason) == (decision, reason)


@PROPERTY
@given(weights=st.lists(st.integers(1, 5), min_size=1, max_size=8), quorum=st.integers(0, 40),
       data=st.data())
def test_quorum_not_met_means_no_decision(weights: list[int], quorum: int, data: st.DataObject) -> None:
    votes = {f"v{i}": (w, data.draw(st.sampled_from(["yes", "no"]))) for i, w in enumerate(weights)}
    result = single("majority", votes, quorum=quorum)
    if sum(weights) < quorum:
        assert (result.decision, result.reason) == (None, "no_quorum")
    else:
        assert result.reason != "no_quorum"


def test_deadline_and_validation() -> None:
    vote = Vote({"rule": "borda", "options": ["a", "b", "c"], "voters": {"x": 1, "y": 2}, "deadline": 10})
    rejects(vote, Cast(voter="x", choice="a"), 1, InvalidEvent, "ranked ballot")
    rejects(vote, CastRanked(voter="x", ranking=["a", "b"]), 1, InvalidEvent, "rank all 3")
    rejects(vote, CastRanked(voter="x", ranking=["a", "a", "b"]), 1, InvalidEvent, "twice")
    rejects(vote, CastRanked(voter="x", ranking=["a", "b", "q"]), 1, InvalidEvent, "unknown option")
    rejects(vote, CastRanked(voter="q", ranking=["a", "b", "c"]), 1, InvalidEvent, "unknown voter")
    vote.apply(CastRanked(voter="x", ranking=["c", "b", "a"]), 1)
    rejects(vote, CastRanked(voter="x", ranking=["a", "b", "c"]), 2, InvalidEvent, "already voted")
    rejects(vote, CastRanked(voter="y", ranking=["a", "b", "c"]), 10, MechanismClosed, "deadline")
    vote.apply(Tick(), 10)
    assert vote.outcome() is not None and vote.outcome().decision == "c"  # type: ignore[union-attr]
    with pytest.raises(InvalidConfig, match="threshold"):
        Vote({"rule": "supermajority", "options": ["a", "b"], "voters": {"x": 1}, "threshold": (1, 2)})
    with pytest.raises(InvalidConfig, match="voters"):
        Vote({"rule": "majority", "options": ["a", "b"], "voters": {"x": 0}})
