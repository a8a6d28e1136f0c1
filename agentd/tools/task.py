"""The tool task state machine: a pure table of transitions, no I/O, no clock.

Every tool invocation is a *task* that moves through these states::

    awaiting_approval ──approve──▶ queued ──start──▶ running ──progress──▶ streaming_output
           │ deny/expire             │                 │ │                      │
           ▼                         ▼                 ▼ ▼                      ▼
         failed                  canceled     succeeded / failed / canceled / timed_out

``awaiting_approval`` exists only for tools whose policy is ``ask``; the others
start ``queued``. ``succeeded``, ``failed``, ``canceled`` and ``timed_out`` are
terminal. An outcome that arrives after a task is terminal (a tool that returns
after its timeout or cancel) is *late*: :func:`step` reports it as ignored and
never reopens the task — the caller records it as non-authoritative.

Like h11's state tables, the whole machine is :data:`TRANSITIONS`; tests walk
every (state, event) pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class TaskState(StrEnum):
    """Where a tool task is."""

    AWAITING_APPROVAL = "awaiting_approval"
    QUEUED = "queued"
    RUNNING = "running"
    STREAMING_OUTPUT = "streaming_output"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        """True for the states a task never leaves."""
        return self in TERMINAL


class TaskEvent(StrEnum):
    """What can happen to a tool task."""

    APPROVE = "approve"
    DENY = "deny"
    EXPIRE = "expire"  # the approval deadline passed: the same as a denial
    START = "start"
    PROGRESS = "progress"
    SUCCEED = "succeed"
    FAIL = "fail"
    CANCEL = "cancel"
    TIMEOUT = "timeout"


TERMINAL = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELED, TaskState.TIMED_OUT})

_S, _E = TaskState, TaskEvent
_ACTIVE_EXITS = {
    _E.PROGRESS: _S.STREAMING_OUTPUT,
    _E.SUCCEED: _S.SUCCEEDED,
    _E.FAIL: _S.FAILED,
    _E.CANCEL: _S.CANCELED,
    _E.TIMEOUT: _S.TIMED_OUT,
}

#: (state, event) -> next state. A pair that is absent is either late (the task is terminal) or invalid.
TRANSITIONS: dict[tuple[TaskState, TaskEvent], TaskState] = {
    (_S.AWAITING_APPROVAL, _E.APPROVE): _S.QUEUED,
    (_S.AWAITING_APPROVAL, _E.DENY): _S.FAILED,
    (_S.AWAITING_APPROVAL, _E.EXPIRE): _S.FAILED,
    (_S.AWAITING_APPROVAL, _E.CANCEL): _S.CANCELED,
    (_S.QUEUED, _E.START): _S.RUNNING,
    (_S.QUEUED, _E.CANCEL): _S.CANCELED,
    (_S.QUEUED, _E.TIMEOUT): _S.TIMED_OUT,
    **{(_S.RUNNING, event): target for event, target in _ACTIVE_EXITS.items()},
    **{(_S.STREAMING_OUTPUT, event): target for event, target in _ACTIVE_EXITS.items()},
}

#: The error class a task that ends in ``failed`` without an error of its own records, by event.
FAILURE_CLASS: dict[TaskEvent, str] = {
    TaskEvent.DENY: "approval_denied",
    TaskEvent.EXPIRE: "approval_expired",
}


class InvalidTransition(ValueError):
    """An event that cannot happen in the task's current (non-terminal) state: a bug in the caller."""


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of one event: the next state, and whether the event was a late one ignored."""

    state: TaskState
    ignored: bool = False

    @property
    def changed(self) -> bool:
        """True when the event moved the task (progress on a streaming task counts as a move)."""
        return not self.ignored


def initial_state(needs_approval: bool) -> TaskState:
    """Where a new task starts: waiting for a human when its policy is ``ask``, else queued."""
    return TaskState.AWAITING_APPROVAL if needs_approval else TaskState.QUEUED


def step(state: TaskState, event: TaskEvent) -> Step:
    """Apply ``event`` to a task in ``state``.

    A terminal task ignores every event (a late result never reopens it); an event
    that is impossible in a live state raises :class:`InvalidTransition`.
    """
    target = TRANSITIONS.get((state, event))
    if target is not None:
        return Step(target)
    if state.terminal:
        return Step(state, ignored=True)
    raise InvalidTransition(f"tool task in state {state.value!r} cannot take event {event.value!r}")
