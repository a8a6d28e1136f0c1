"""The tool task state machine, exhaustively: every (state, event) pair has a defined outcome."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentd.tools.task import (
    TERMINAL,
    TRANSITIONS,
    InvalidTransition,
    TaskEvent,
    TaskState,
    initial_state,
    step,
)

S, E = TaskState, TaskEvent

# The whole table, written out once more by hand: a change to the machine must change this test.
EXPECTED = {
    (S.AWAITING_APPROVAL, E.APPROVE): S.QUEUED,
    (S.AWAITING_APPROVAL, E.DENY): S.FAILED,
    (S.AWAITING_APPROVAL, E.EXPIRE): S.FAILED,
    (S.AWAITING_APPROVAL, E.CANCEL): S.CANCELED,
    (S.QUEUED, E.START): S.RUNNING,
    (S.QUEUED, E.CANCEL): S.CANCELED,
    (S.QUEUED, E.TIMEOUT): S.TIMED_OUT,
    (S.RUNNING, E.PROGRESS): S.STREAMING_OUTPUT,
    (S.RUNNING, E.SUCCEED): S.SUCCEEDED,
    (S.RUNNING, E.FAIL): S.FAILED,
    (S.RUNNING, E.CANCEL): S.CANCELED,
    (S.RUNNING, E.TIMEOUT): S.TIMED_OUT,
    (S.STREAMING_OUTPUT, E.PROGRESS): S.STREAMING_OUTPUT,
    (S.STREAMING_OUTPUT, E.SUCCEED): S.SUCCEEDED,
    (S.STREAMING_OUTPUT, E.FAIL): S.FAILED,
    (S.STREAMING_OUTPUT, E.CANCEL): S.CANCELED,
    (S.STREAMING_OUTPUT, E.TIMEOUT): S.TIMED_OUT,
}


@pytest.mark.parametrize(("state", "event"), list(itertools.product(TaskState, TaskEvent)))
def test_every_pair(state: TaskState, event: TaskEvent) -> None:
    # Allowed pairs move as the table says; terminal states ignore everything; the rest is a caller bug.
    if (state, event) in EXPECTED:
        assert step(state, event).state is EXPECTED[(state, event)]
        assert not step(state, event).ignored
    elif state in TERMINAL:
        outcome = step(state, event)
        assert outcome.ignored and outcome.state is state
    else:
        with pytest.raises(InvalidTransition, match=event.value):
            step(state, event)


def test_table_is_the_expected_one() -> None:
    assert TRANSITIONS == EXPECTED


def test_cancel_while_running_and_timeout_while_streaming() -> None:
    assert step(S.RUNNING, E.CANCEL).state is S.CANCELED
    streaming = step(S.RUNNING, E.PROGRESS).state
    assert step(streaming, E.TIMEOUT).state is S.TIMED_OUT


def test_late_result_never_reopens_a_finished_task() -> None:
    for terminal in (S.CANCELED, S.TIMED_OUT):
        outcome = step(terminal, E.SUCCEED)
        assert outcome.ignored and outcome.state is terminal


def test_initial_state_depends_on_approval() -> None:
    assert initial_state(needs_approval=True) is S.AWAITING_APPROVAL
    assert initial_state(needs_approval=False) is S.QUEUED


@given(st.lists(st.sampled_from(list(TaskEvent)), max_size=30), st.booleans())
def test_any_sequence_ends_terminal_at_most_once(events: list[TaskEvent], ask: bool) -> None:
    # Feeding only events that are valid, a task never leaves a terminal state once it reached one.
    state = initial_state(ask)
    reached_terminal = False
    for event in events:
        try:
            outcome = step(state, event)
        except InvalidTransition:
            continue
        if reached_terminal:
            assert outcome.ignored and outcome.state is state
        state = outcome.state
        reached_terminal = reached_terminal or state.terminal
