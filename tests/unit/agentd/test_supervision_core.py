"""The supervisor's pure restart decision, grouped like OTP's supervisor suite."""

from __future__ import annotations

import pytest

from agentd.supervision import (
    REACHED_MAX_RESTART_INTENSITY,
    ChildSpec,
    GiveUp,
    Restart,
    StartChildren,
    StartSpec,
    StopChildren,
    Strategy,
    SupervisorFlags,
    add_child,
    add_restart,
    delete_child,
    initial_state,
    is_normal_exit,
    on_child_exit,
    shutdown,
    start_all,
    terminate_child,
)


def child(child_id: str, restart: Restart = Restart.PERMANENT) -> ChildSpec:
    return ChildSpec(id=child_id, start=StartSpec(type="echo"), restart=restart)


def running(strategy: Strategy, *specs: ChildSpec, max_restarts: int = 3, max_seconds: float = 5.0):
    flags = SupervisorFlags(strategy=strategy, max_restarts=max_restarts, max_seconds=max_seconds)
    return start_all(initial_state(flags, specs)).state


ABC = (child("a"), child("b"), child("c"))


# --- each strategy's restart set and order -------------------------------------------------

@pytest.mark.parametrize(("strategy", "failed", "actions"), [
    # one_for_one: only the failed child, nothing stopped.
    (Strategy.ONE_FOR_ONE, "b", (StartChildren(("b",)),)),
    # one_for_all: the others stopped in reverse start order, then all started in order.
    (Strategy.ONE_FOR_ALL, "b", (StopChildren(("c", "a")), StartChildren(("a", "b", "c")))),
    (Strategy.ONE_FOR_ALL, "a", (StopChildren(("c", "b")), StartChildren(("a", "b", "c")))),
    # rest_for_one: the children after the failed one stopped in reverse, then failed+rest started.
    (Strategy.REST_FOR_ONE, "a", (StopChildren(("c", "b")), StartChildren(("a", "b", "c")))),
    (Strategy.REST_FOR_ONE, "b", (StopChildren(("c",)), StartChildren(("b", "c")))),
    # rest_for_one on the last child: nothing to stop.
    (Strategy.REST_FOR_ONE, "c", (StartChildren(("c",)),)),
])
def test_strategy_restart_set_and_order(strategy: Strategy, failed: str, actions: tuple) -> None:
    decision = on_child_exit(running(strategy, *ABC), failed, "error: boom", now=0.0)
    assert decision.actions == actions
    assert decision.state.running == frozenset({"a", "b", "c"})


def test_start_all_starts_in_order_and_shutdown_stops_in_reverse() -> None:
    # Ordered start, reverse-ordered shutdown.
    flags = SupervisorFlags()
    decision = start_all(initial_state(flags, ABC))
    assert decision.actions == (StartChildren(("a", "b", "c")),)
    assert shutdown(decision.state).actions == (StopChildren(("c", "b", "a")),)


def test_one_for_all_does_not_restart_temporary_siblings() -> None:
    # A temporary child stopped because of a sibling's crash is removed, not restarted (OTP).
    state = running(Strategy.ONE_FOR_ALL, child("a"), child("t", Restart.TEMPORARY), child("c"))
    decision = on_child_exit(state, "c", "error: boom", now=0.0)
    assert decision.actions == (StopChildren(("t", "a")), StartChildren(("a", "c")))
    assert [s.id for s in decision.state.children] == ["a", "c"]


def test_one_for_all_restarts_a_transient_sibling_that_had_ended_normally() -> None:
    # As in OTP, one_for_all starts every non-temporary child again, running or not.
    state = running(Strategy.ONE_FOR_ALL, child("a", Restart.TRANSIENT), child("b"))
    state = on_child_exit(state, "a", "normal", now=0.0).state
    decision = on_child_exit(state, "b", "killed", now=1.0)
    assert decision.actions == (StartChildren(("a", "b")),)


# --- normal and abnormal termination by restart type ----------------------------------------

@pytest.mark.parametrize(("restart", "reason", "restarted"), [
    (Restart.PERMANENT, "normal", True),
    (Restart.PERMANENT, "shutdown", True),
    (Restart.PERMANENT, "error: boom", True),
    (Restart.TRANSIENT, "normal", False),
    (Restart.TRANSIENT, "shutdown", False),
    (Restart.TRANSIENT, "shutdown:done", False),
    (Restart.TRANSIENT, "error: boom", True),
    (Restart.TRANSIENT, "timeout", True),
    (Restart.TRANSIENT, "killed", True),
    (Restart.TEMPORARY, "normal", False),
    (Restart.TEMPORARY, "error: boom", False),
    (Restart.TEMPORARY, "killed", False),
])
def test_restart_type_by_reason(restart: Restart, reason: str, restarted: bool) -> None:
    decision = on_child_exit(running(Strategy.ONE_FOR_ONE, child("x", restart)), "x", reason, now=0.0)
    assert (decision.actions == (StartChildren(("x",)),)) is restarted
    assert ("x" in decision.state.running) is restarted


def test_temporary_child_is_removed_when_it_ends_and_transient_is_kept() -> None:
    state = running(Strategy.ONE_FOR_ONE, child("t", Restart.TEMPORARY), child("r", Restart.TRANSIENT))
    state = on_child_exit(state, "t", "error: boom", now=0.0).state
    state = on_child_exit(state, "r", "normal", now=0.0).state
    assert [s.id for s in state.children] == ["r"]
    assert state.running == frozenset()


def test_exit_of_a_child_the_supervisor_stopped_is_ignored() -> None:
    # After StopChildren the supervisor does not react to those children's exits.
    state = running(Strategy.ONE_FOR_ALL, *ABC)
    state = on_child_exit(state, "a", "error: boom", now=0.0).state
    state = terminate_child(state, "b").state
    assert on_child_exit(state, "b", "shutdown", now=0.0).actions == ()


@pytest.mark.parametrize("reason", ["normal", "shutdown", "shutdown:reached_max_restart_intensity"])
def test_normal_exit_reasons(reason: str) -> None:
    assert is_normal_exit(reason)


@pytest.mark.parametrize("reason", ["timeout", "killed", "error: x", "shutdownx"])
def test_abnormal_exit_reasons(reason: str) -> None:
    assert not is_normal_exit(reason)


# --- restart intensity ------------------------------------------------------------------------

def test_intensity_exceeded_gives_up_stopping_children_in_reverse() -> None:
    # max_restarts=2 in 10 s: the third restart in the period makes the supervisor give up.
    state = running(Strategy.ONE_FOR_ONE, *ABC, max_restarts=2, max_seconds=10)
    for t in (0.0, 1.0):
        decision = on_child_exit(state, "b", "error: boom", now=t)
        assert decision.actions == (StartChildren(("b",)),)
        state = decision.state
    decision = on_child_exit(state, "b", "error: boom", now=2.0)
    assert decision.actions == (GiveUp(REACHED_MAX_RESTART_INTENSITY, ("c", "a")),)
    assert decision.state.running == frozenset()


def test_restarts_outside_the_period_are_forgotten() -> None:
    # Restarts spread wider than max_seconds never add up to the limit.
    state = running(Strategy.ONE_FOR_ONE, child("a"), max_restarts=1, max_seconds=5)
    for t in (0.0, 5.0, 10.0, 15.0):
        decision = on_child_exit(state, "a", "killed", now=t)
        assert decision.actions == (StartChildren(("a",)),)
        state = decision.state
    assert len(state.restarts) == 1


def test_zero_max_restarts_gives_up_at_the_first_restart() -> None:
    state = running(Strategy.ONE_FOR_ONE, child("a"), max_restarts=0)
    assert isinstance(on_child_exit(state, "a", "killed", now=0).actions[0], GiveUp)


def test_normal_exits_do_not_count_against_intensity() -> None:
    state = running(Strategy.ONE_FOR_ONE, *(child(f"t{i}", Restart.TRANSIENT) for i in range(5)),
                    max_restarts=1)
    for i in range(5):
        state = on_child_exit(state, f"t{i}", "normal", now=0).state
    assert state.restarts == ()


def test_add_restart_matches_otp() -> None:
    ok, times = add_restart((), 0.0, 1, 5.0)
    assert ok and times == (0.0,)
    ok, times = add_restart(times, 4.9, 1, 5.0)
    assert not ok
    ok, times = add_restart((0.0,), 5.0, 1, 5.0)
    assert ok and times == (5.0,)


# --- dynamic children -------------------------------------------------------------------------

def test_add_terminate_delete_child() -> None:
    state = running(Strategy.ONE_FOR_ONE)
    decision = add_child(state, child("d", Restart.TRANSIENT))
    assert decision.actions == (StartChildren(("d",)),)
    with pytest.raises(ValueError, match="already exists"):
        add_child(decision.state, child("d"))
    decision = terminate_child(decision.state, "d")
    assert decision.actions == (StopChildren(("d",)),)
    assert decision.state.child("d") is not None
    assert delete_child(decision.state, "d").children == ()


def test_terminate_temporary_child_removes_it() -> None:
    state = add_child(running(Strategy.ONE_FOR_ONE), child("t", Restart.TEMPORARY)).state
    assert terminate_child(state, "t").state.children == ()


def test_duplicate_ids_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        initial_state(SupervisorFlags(), [child("a"), child("a")])


def test_child_spec_is_data() -> None:
    spec = ChildSpec.model_validate({"id": "w1", "start": {"type": "echo", "args": {"n": 1}},
                                     "restart": "transient", "shutdown": "brutal_kill"})
    assert spec.restart is Restart.TRANSIENT and spec.shutdown == "brutal_kill"
    assert ChildSpec.model_validate_json(spec.model_dump_json()) == spec
