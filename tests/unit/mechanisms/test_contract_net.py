"""Contract net: deadlines, exactly one award per task per round, iterated rounds, reports."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from mechanism_helpers import PROPERTY, rejects, try_apply

from coordinator.mechanisms.base import Close, Tick
from coordinator.mechanisms.contract_net import (
    CallForProposals,
    ContractNet,
    Propose,
    Refuse,
    Report,
    SendAward,
    SendReject,
)
from coordinator.mechanisms.errors import InvalidEvent, MechanismClosed

CONTRACTORS = ["c0", "c1", "c2", "c3"]


@PROPERTY
@given(responses=st.lists(st.tuples(st.sampled_from(["t0", "t1", "t2"]), st.sampled_from(CONTRACTORS),
                                    st.integers(0, 40), st.integers(1, 30)), max_size=25),
       max_cost=st.one_of(st.none(), st.integers(0, 40)))
def test_one_award_per_task_per_round_and_late_proposals_refused(
        responses: list[tuple[str, str, int, int]], max_cost: int | None) -> None:
    net = ContractNet({"contractors": CONTRACTORS})
    for task in ("t0", "t1", "t2"):
        net.apply(CallForProposals(task_id=task, deadline=20, max_cost=max_cost), 0)
    accepted: dict[str, list[tuple[str, int, int]]] = {"t0": [], "t1": [], "t2": []}
    for task, contractor, cost, at in sorted(responses, key=lambda r: r[3]):
        event = Propose(task_id=task, contractor=contractor, cost=cost)
        if at >= 20:
            rejects(net, event, at, MechanismClosed, "after the deadline")
        elif try_apply(net, event, at):
            accepted[task].append((contractor, cost, at))
        else:
            assert any(c == contractor for c, _, _ in accepted[task])  # only a second answer is refused
    actions = net.apply(Tick(), 30)
    for task, proposals in accepted.items():
        awards = [a for a in actions if isinstance(a, SendAward) and a.task_id == task]
        rejections = [a for a in actions if isinstance(a, SendReject) and a.task_id == task]
        eligible = [p for p in proposals if max_cost is None or p[1] <= max_cost]
        assert len(awards) == (1 if eligible else 0)
        assert len(awards) + len(rejections) == len(proposals)
        if eligible:
            best = min(eligible, key=lambda p: (p[1], p[2], p[0]))
            assert (awards[0].to, awards[0].cost) == (best[0], best[1])


def test_iterated_rounds_then_report() -> None:
    net = ContractNet({"contractors": ["a", "b"], "max_rounds": 2})
    net.apply(CallForProposals(task_id="paint", deadline=10, max_cost=50), 0)
    net.apply(Propose(task_id="paint", contractor="a", cost=80), 1)
    net.apply(Refuse(task_id="paint", contractor="b"), 2)
    rejects(net, Propose(task_id="paint", contractor="a", cost=40), 3, InvalidEvent, "already answered")
    actions = net.apply(Tick(), 10)
    assert [a.type for a in actions] == ["send_reject"]
    assert net.task("paint").status == "unawarded"  # type: ignore[union-attr]
    # Round 2: the manager raises its limit; a tie on cost goes to the earlier proposal.
    net.apply(CallForProposals(task_id="paint", deadline=30, max_cost=90), 11)
    net.apply(Propose(task_id="paint", contractor="b", cost=70), 12)
    net.apply(Propose(task_id="paint", contractor="a", cost=70), 13)
    actions = net.apply(Tick(), 30)
    assert [(a.type, a.to) for a in actions] == [("send_award", "b"), ("send_reject", "a")]
    rejects(net, CallForProposals(task_id="paint", deadline=50), 31, InvalidEvent, "cannot be called again")
    rejects(net, Report(task_id="paint", contractor="a", result="done"), 31, InvalidEvent, "holds no award")
    net.apply(Report(task_id="paint", contractor="b", result="done"), 32)
    net.apply(Close(), 33)
    outcome = net.outcome()
    assert outcome is not None
    (task,) = outcome.tasks
    assert task.status == "done" and [r.awarded_to for r in task.rounds] == [None, "b"]


def test_rounds_exhausted_fail_and_validation() -> None:
    net = ContractNet({"contractors": ["a"], "max_rounds": 1})
    rejects(net, CallForProposals(task_id="t", deadline=0), 0, InvalidEvent, "not after now")
    net.apply(CallForProposals(task_id="t", deadline=5), 0)
    rejects(net, Propose(task_id="nope", contractor="a", cost=1), 1, InvalidEvent, "unknown task")
    rejects(net, Propose(task_id="t", contractor="z", cost=1), 1, InvalidEvent, "unknown contractor")
    rejects(net, {"type": "propose", "task_id": "t", "contractor": "a", "cost": -1}, 1, InvalidEvent, "cost")
    net.apply(Tick(), 5)
    assert net.task("t").status == "failed"  # type: ignore[union-attr]
    rejects(net, Propose(task_id="t", contractor="a", cost=1), 6, MechanismClosed, "no open round")
