"""The supervisor's restart decision as a pure state machine (no asyncio, no clock).

OTP's names and meanings: child specs are data (``id``, ``start``, ``restart``,
``shutdown``); a supervisor has a strategy (``one_for_one``, ``one_for_all``,
``rest_for_one``) and a restart intensity (at most ``max_restarts`` restarts in
``max_seconds``). The runtime feeds events in and performs the actions that come
out::

    decision = on_child_exit(state, child_id, reason, now)
    # decision.actions: StopChildren(ids in stop order), StartChildren(ids in start
    # order) or GiveUp(reason) -- stop every running child, then exit with reason.

Exit reasons are strings. ``normal``, ``shutdown`` and ``shutdown:<anything>`` (OTP's
``{shutdown, Term}``) are normal exits; everything else (``timeout``, ``killed``,
``error: ...``) is abnormal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NORMAL = "normal"
SHUTDOWN = "shutdown"
KILLED = "killed"
TIMEOUT = "timeout"
#: The reason a supervisor exits with when its restart intensity is exceeded.
REACHED_MAX_RESTART_INTENSITY = "shutdown:reached_max_restart_intensity"


class Restart(StrEnum):
    """When a terminated child is restarted (OTP restart types)."""

    PERMANENT = "permanent"  # always
    TRANSIENT = "transient"  # only after an abnormal exit
    TEMPORARY = "temporary"  # never; removed from the supervisor when it ends


class Strategy(StrEnum):
    """Which children are restarted when one of them must be (OTP strategies)."""

    ONE_FOR_ONE = "one_for_one"  # only the child that exited
    ONE_FOR_ALL = "one_for_all"  # every child: stop the others, start them all again
    REST_FOR_ONE = "rest_for_one"  # the child and every child started after it


class StartSpec(BaseModel):
    """How to start a child: a registered agent type name and its start arguments (JSON-like data)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str = Field(min_length=1, max_length=200)
    args: dict[str, Any] = Field(default_factory=dict)


class ChildSpec(BaseModel):
    """A child of a supervisor, as data (OTP's child specification)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:@-]+$")
    start: StartSpec
    restart: Restart = Restart.PERMANENT
    #: Seconds to wait for ``terminate`` after a shutdown request, or ``brutal_kill``.
    shutdown: float | Literal["brutal_kill"] = 5.0
    #: A registered name for the child (unique per runtime), kept across restarts.
    name: str | None = Field(default=None, min_length=1, max_length=200)
    #: ``process`` asks for an OS worker process of the child's own (see agentd.workers).
    isolation: Literal["shared", "process"] = "shared"
    #: The mailbox capacity asked for (None: the agent type's own, else the runtime's default).
    mailbox_capacity: int | None = Field(default=None, ge=1, le=10_000_000)
    #: An upper bound on the capacity the defaults give (the tenant's ``max_mailbox`` quota at spawn).
    mailbox_bound: int | None = Field(default=None, ge=1)

    @field_validator("shutdown")
    @classmethod
    def _positive_shutdown(cls, value: float | str) -> float | str:
        if isinstance(value, float) and value < 0:
            raise ValueError("shutdown must be >= 0 seconds or 'brutal_kill'")
        return value


class SupervisorFlags(BaseModel):
    """A supervisor's strategy and restart intensity (OTP's supervisor flags)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: Strategy = Strategy.ONE_FOR_ONE
    max_restarts: int = Field(default=3, ge=0)
    max_seconds: float = Field(default=5.0, gt=0)


def is_normal_exit(reason: str) -> bool:
    """True for ``normal``, ``shutdown`` and ``shutdown:<term>``: exits a transient child is not restarted for."""
    return reason in (NORMAL, SHUTDOWN) or reason.startswith("shutdown:")


def should_restart(restart: Restart, reason: str) -> bool:
    """Whether a child of this restart type is restarted after exiting with ``reason``."""
    if restart is Restart.PERMANENT:
        return True
    if restart is Restart.TRANSIENT:
        return not is_normal_exit(reason)
    return False


def add_restart(restarts: tuple[float, ...], now: float, max_restarts: int,
                max_seconds: float) -> tuple[bool, tuple[float, ...]]:
    """OTP's intensity check: record a restart at ``now``; False when more than ``max_restarts`` fall in the period.

    Only restart times inside the last ``max_seconds`` are kept, so the tuple never
    grows beyond ``max_restarts + 1``.
    """
    kept = tuple(t for t in restarts if now - t < max_seconds)
    recorded = (*kept, now)
    return len(recorded) <= max_restarts, recorded


@dataclass(frozen=True)
class StopChildren:
    """Stop these running children, in this order (reverse start order), without restarting them."""

    ids: tuple[str, ...]


@dataclass(frozen=True)
class StartChildren:
    """Start these children, in this order (start order)."""

    ids: tuple[str, ...]


@dataclass(frozen=True)
class GiveUp:
    """Restart intensity exceeded: stop every running child in reverse order, then exit with ``reason``."""

    reason: str
    stop_ids: tuple[str, ...]


Action = StopChildren | StartChildren | GiveUp


@dataclass(frozen=True)
class SupervisorState:
    """What a supervisor knows: its flags, its children in start order, which run, recent restart times."""

    flags: SupervisorFlags
    children: tuple[ChildSpec, ...] = ()
    running: frozenset[str] = frozenset()
    restarts: tuple[float, ...] = ()
    #: Bumped for every child that gets an id from the supervisor (dynamic supervisors).
    next_serial: int = field(default=0)

    def child(self, child_id: str) -> ChildSpec | None:
        """The spec of a child by id, or None."""
        for spec in self.children:
            if spec.id == child_id:
                return spec
        return None

    def running_in_order(self) -> tuple[str, ...]:
        """Ids of the running children in start order."""
        return tuple(spec.id for spec in self.children if spec.id in self.running)


@dataclass(frozen=True)
class Decision:
    """The next state and the actions the runtime must perform, in order."""

    state: SupervisorState
    actions: tuple[Action, ...] = ()


def initial_state(flags: SupervisorFlags, children: Sequence[ChildSpec]) -> SupervisorState:
    """A supervisor with these children, none running yet; duplicate ids are rejected."""
    ids = [spec.id for spec in children]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate child ids: {sorted({i for i in ids if ids.count(i) > 1})}")
    return SupervisorState(flags=flags, children=tuple(children))


def start_all(state: SupervisorState) -> Decision:
    """The supervisor's own start: start every child in order."""
    ids = tuple(spec.id for spec in state.children)
    return Decision(replace(state, running=frozenset(ids)), (StartChildren(ids),) if ids else ())


def add_child(state: SupervisorState, spec: ChildSpec) -> Decision:
    """``start_child``: append a child and start it; ValueError when the id is taken."""
    if state.child(spec.id) is not None:
        raise ValueError(f"child id {spec.id!r} already exists")
    new = replace(state, children=(*state.children, spec), running=state.running | {spec.id},
                  next_serial=state.next_serial + 1)
    return Decision(new, (StartChildren((spec.id,)),))


def terminate_child(state: SupervisorState, child_id: str) -> Decision:
    """``terminate_child``: stop a child without restart; a temporary child is also removed."""
    spec = state.child(child_id)
    if spec is None:
        raise KeyError(child_id)
    actions: tuple[Action, ...] = (StopChildren((child_id,)),) if child_id in state.running else ()
    new = replace(state, running=state.running - {child_id})
    if spec.restart is Restart.TEMPORARY:
        new = _remove(new, (child_id,))
    return Decision(new, actions)


def delete_child(state: SupervisorState, child_id: str) -> SupervisorState:
    """``delete_child``: forget a child that is not running; ValueError while it runs."""
    if child_id in state.running:
        raise ValueError(f"child {child_id!r} is running; terminate it first")
    if state.child(child_id) is None:
        raise KeyError(child_id)
    return _remove(state, (child_id,))


def start_failed(state: SupervisorState, not_started: Sequence[str]) -> SupervisorState:
    """Children the runtime could not start (after one in the list failed) are marked not running."""
    return replace(state, running=state.running - set(not_started))


def shutdown(state: SupervisorState) -> Decision:
    """The supervisor's own shutdown: stop every running child in reverse start order."""
    stop = tuple(reversed(state.running_in_order()))
    new = _remove(replace(state, running=frozenset()), _temporary(state, stop))
    return Decision(new, (StopChildren(stop),) if stop else ())


def on_child_exit(state: SupervisorState, child_id: str, reason: str, now: float) -> Decision:
    """A child exited with ``reason`` at time ``now``: what to stop, what to restart, or give up.

    Exits of children that are not running (already stopped by the supervisor) are
    ignored, as OTP ignores EXIT signals from children it terminated itself.
    """
    spec = state.child(child_id)
    if spec is None or child_id not in state.running:
        return Decision(state)
    state = replace(state, running=state.running - {child_id})
    if not should_restart(spec.restart, reason):
        if spec.restart is Restart.TEMPORARY:
            state = _remove(state, (child_id,))
        return Decision(state)
    ok, restarts = add_restart(state.restarts, now, state.flags.max_restarts, state.flags.max_seconds)
    state = replace(state, restarts=restarts)
    if not ok:
        stop = tuple(reversed(state.running_in_order()))
        return Decision(replace(state, running=frozenset()), (GiveUp(REACHED_MAX_RESTART_INTENSITY, stop),))
    strategy = state.flags.strategy
    if strategy is Strategy.ONE_FOR_ONE:
        return Decision(replace(state, running=state.running | {child_id}), (StartChildren((child_id,)),))
    order = [s.id for s in state.children]
    affected = order if strategy is Strategy.ONE_FOR_ALL else order[order.index(child_id):]
    stop = tuple(cid for cid in reversed(affected) if cid in state.running)
    # Temporary children stopped because of a sibling are not restarted (OTP removes them).
    removed = _temporary(state, affected)
    state = _remove(state, tuple(cid for cid in removed if cid != child_id))
    start = tuple(cid for cid in affected if cid not in removed)
    state = replace(state, running=(state.running - set(stop)) | set(start))
    actions: list[Action] = []
    if stop:
        actions.append(StopChildren(stop))
    actions.append(StartChildren(start))
    return Decision(state, tuple(actions))


def _temporary(state: SupervisorState, ids: Sequence[str]) -> tuple[str, ...]:
    """The temporary children among ``ids``."""
    temporary = {s.id for s in state.children if s.restart is Restart.TEMPORARY}
    return tuple(cid for cid in ids if cid in temporary)


def _remove(state: SupervisorState, ids: Sequence[str]) -> SupervisorState:
    """Drop children from the supervisor's list."""
    gone = set(ids)
    return replace(state, children=tuple(s for s in state.children if s.id not in gone),
                   running=state.running - gone)


def replace_spec(state: SupervisorState, spec: ChildSpec) -> SupervisorState:
    """The same supervisor with one child's spec replaced (a restart policy changed its start args)."""
    return replace(state, children=tuple(spec if s.id == spec.id else s for s in state.children))


def dynamic_exit(restart: Restart, reason: str, restarts: tuple[float, ...], now: float,
                 flags: SupervisorFlags) -> tuple[Literal["restart", "remove", "give_up"], tuple[float, ...]]:
    """A dynamic supervisor's decision for one child's exit (one_for_one; children not restarted are removed)."""
    if not should_restart(restart, reason):
        return "remove", restarts
    ok, recorded = add_restart(restarts, now, flags.max_restarts, flags.max_seconds)
    return ("restart" if ok else "give_up"), recorded
