"""The Contract Net Protocol (FIPA), iterated: call for proposals, proposals, award, report.

Rules
-----
* The manager announces a task with :class:`CallForProposals` (a deadline
  after ``now`` and an optional ``max_cost``); each configured contractor
  receives a ``SendCfp`` action. A task has at most one round open at a time.
* Until the deadline, each contractor may answer once per round with a
  :class:`Propose` (a cost) or a :class:`Refuse`. Answers at or after the
  deadline, from unknown contractors, for unknown tasks or for rounds that are
  not open are refused with a typed error.
* At the deadline (a :class:`Tick` at or after it) the round is evaluated:
  among proposals with ``cost <= max_cost`` the **lowest cost** wins, ties
  going to the **earliest** proposal and then the **smallest contractor id**.
  Exactly one ``SendAward`` is issued and every other proposer receives
  ``SendReject``. With no acceptable proposal the task becomes
  ``unawarded``: the manager may call again (an *iterated* round, perhaps with
  a higher ``max_cost``) while fewer than ``max_rounds`` rounds have run;
  otherwise the task ``failed``.
* The awarded contractor ends the task with :class:`Report`: ``done`` or
  ``failed``. :class:`Close` ends the protocol and yields every task's history.
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
    ScheduleTick,
    Tick,
    Time,
)
from coordinator.mechanisms.errors import InvalidConfig, InvalidEvent, MechanismClosed

TaskStatus = Literal["open", "unawarded", "awarded", "done", "failed"]


class ContractNetConfig(Model):
    """The contractors who receive calls and the number of rounds a task may run."""

    contractors: list[Ident] = Field(min_length=1)
    max_rounds: Annotated[int, Field(strict=True, gt=0, le=1000)] = 3


class CallForProposals(Model):
    """Announce (or re-announce) ``task_id`` with a proposal deadline."""

    type: Literal["cfp"] = "cfp"
    task_id: Ident
    deadline: Time
    max_cost: Amount | None = None


class Propose(Model):
    """A contractor offers to do the task for ``cost``."""

    type: Literal["propose"] = "propose"
    task_id: Ident
    contractor: Ident
    cost: Amount


class Refuse(Model):
    """A contractor declines the call."""

    type: Literal["refuse"] = "refuse"
    task_id: Ident
    contractor: Ident


class Report(Model):
    """The awarded contractor reports the task's result."""

    type: Literal["report"] = "report"
    task_id: Ident
    contractor: Ident
    result: Literal["done", "failed"]


ContractNetEvent = Annotated[CallForProposals | Propose | Refuse | Report | Tick | Close,
                             Field(discriminator="type")]


class SendCfp(Action):
    """Send the call for proposals of ``task_id`` (round ``round``) to ``to``."""

    type: Literal["send_cfp"] = "send_cfp"
    task_id: str
    round: int
    to: str
    deadline: int


class SendAward(Action):
    """Tell ``to`` it won ``task_id`` at ``cost``."""

    type: Literal["send_award"] = "send_award"
    task_id: str
    round: int
    to: str
    cost: int


class SendReject(Action):
    """Tell ``to`` its proposal for ``task_id`` was not accepted."""

    type: Literal["send_reject"] = "send_reject"
    task_id: str
    round: int
    to: str


class Proposal(Model):
    """A proposal with the time it arrived."""

    contractor: str
    cost: int
    at: int


class Round(Model):
    """One call for proposals and how it ended."""

    number: int
    deadline: int
    max_cost: int | None
    proposals: list[Proposal] = []
    refused: list[str] = []
    awarded_to: str | None = None
    cost: int | None = None


class TaskRecord(Model):
    """A task's status and its rounds."""

    task_id: str
    status: TaskStatus
    rounds: list[Round]


class ContractNetOutcome(Model):
    """Every task's final record, in the order the tasks were first called."""

    tasks: list[TaskRecord]


def best_proposal(proposals: list[Proposal], max_cost: int | None) -> Proposal | None:
    """The winning proposal: lowest cost within ``max_cost``, then earliest, then smallest contractor id."""
    acceptable = [p for p in proposals if max_cost is None or p.cost <= max_cost]
    return min(acceptable, key=lambda p: (p.cost, p.at, p.contractor), default=None)


class ContractNet(Mechanism[ContractNetConfig, ContractNetOutcome]):
    """A manager's view of the iterated Contract Net Protocol over many tasks."""

    kind = "contract_net"
    family = "negotiation"
    config_type = ContractNetConfig
    event_type = ContractNetEvent
    outcome_type = ContractNetOutcome

    def __init__(self, config: ContractNetConfig | dict[str, object]) -> None:
        super().__init__(config)
        self._tasks: dict[str, TaskRecord] = {}

    def _check_config(self) -> None:
        if len(set(self.config.contractors)) != len(self.config.contractors):
            raise InvalidConfig("contract_net config: contractors contain duplicates")

    def _step(self, event: CallForProposals | Propose | Refuse | Report | Tick | Close, now: int) -> list[Action]:
        if isinstance(event, Close):
            self._outcome = ContractNetOutcome(tasks=list(self._tasks.values()))
            return []
        if isinstance(event, Tick):
            actions: list[Action] = []
            for task_id in list(self._tasks):
                due = self._tasks[task_id]
                if due.status == "open" and now >= due.rounds[-1].deadline:
                    actions.extend(self._evaluate(due))
            return actions
        if isinstance(event, CallForProposals):
            return self._call(event, now)
        record = self._tasks.get(event.task_id)
        if record is None:
            raise InvalidEvent(f"unknown task {event.task_id!r}")
        if event.contractor not in self.config.contractors:
            raise InvalidEvent(f"unknown contractor {event.contractor!r}")
        current = record.rounds[-1]
        if isinstance(event, Report):
            if record.status != "awarded" or current.awarded_to != event.contractor:
                raise InvalidEvent(f"{event.contractor!r} holds no award for task {event.task_id!r}")
            self._tasks[event.task_id] = record.model_copy(update={"status": event.result})
            return []
        if record.status != "open":
            raise MechanismClosed(f"task {event.task_id!r} has no open round (status {record.status})")
        if now >= current.deadline:
            raise MechanismClosed(f"{event.type} from {event.contractor!r} for {event.task_id!r} at {now} "
                                  f"after the deadline {current.deadline}")
        answered = {p.contractor for p in current.proposals} | set(current.refused)
        if event.contractor in answered:
            raise InvalidEvent(f"{event.contractor!r} already answered round {current.number} of "
                               f"{event.task_id!r}")
        if isinstance(event, Propose):
            proposal = Proposal(contractor=event.contractor, cost=event.cost, at=now)
            updated = current.model_copy(update={"proposals": [*current.proposals, proposal]})
        else:
            updated = current.model_copy(update={"refused": [*current.refused, event.contractor]})
        self._tasks[event.task_id] = record.model_copy(update={"rounds": [*record.rounds[:-1], updated]})
        return []

    def _call(self, event: CallForProposals, now: int) -> list[Action]:
        record = self._tasks.get(event.task_id)
        if event.deadline <= now:
            raise InvalidEvent(f"deadline {event.deadline} for {event.task_id!r} is not after now={now}")
        if record is not None:
            if record.status != "unawarded":
                raise InvalidEvent(f"task {event.task_id!r} cannot be called again (status {record.status})")
            number = len(record.rounds) + 1
        else:
            number = 1
        new_round = Round(number=number, deadline=event.deadline, max_cost=event.max_cost)
        rounds = [*record.rounds, new_round] if record is not None else [new_round]
        self._tasks[event.task_id] = TaskRecord(task_id=event.task_id, status="open", rounds=rounds)
        actions: list[Action] = [SendCfp(task_id=event.task_id, round=number, to=contractor, deadline=event.deadline)
                                 for contractor in self.config.contractors]
        actions.append(ScheduleTick(at=event.deadline))
        return actions

    def _evaluate(self, record: TaskRecord) -> list[Action]:
        current = record.rounds[-1]
        winner = best_proposal(current.proposals, current.max_cost)
        actions: list[Action] = []
        if winner is not None:
            actions.append(SendAward(task_id=record.task_id, round=current.number, to=winner.contractor,
                                     cost=winner.cost))
            status: TaskStatus = "awarded"
            current = current.model_copy(update={"awarded_to": winner.contractor, "cost": winner.cost})
        else:
            status = "unawarded" if current.number < self.config.max_rounds else "failed"
        actions.extend(SendReject(task_id=record.task_id, round=current.number, to=p.contractor)
                       for p in current.proposals if winner is None or p.contractor != winner.contractor)
        self._tasks[record.task_id] = record.model_copy(update={"status": status,
                                                                 "rounds": [*record.rounds[:-1], current]})
        return actions

    def task(self, task_id: str) -> TaskRecord | None:
        """The current record of a task, or None if it was never called."""
        return self._tasks.get(task_id)
