"""The operations between the agentd main process and its workers, as typed frames.

Every frame is one of the dataclasses below; its ``op`` (an :class:`Op`) names it on
the wire, where a frame is a msgpack array ``[op, field, ...]`` in field order
(:func:`encode`). Everything read from a socket goes through :func:`decode`, the one
place that turns an array back into a frame and refuses an unknown op, a wrong
number of fields or a field of the wrong type (:class:`MalformedFrame`).
``rid`` is a request id; 0 means no reply is wanted. Requests are answered by
:class:`Ok` or :class:`Err` with the same ``rid``.

Main -> worker: :class:`Spawn`, :class:`Stop`, :class:`Cast`, :class:`Call`, :class:`Info`,
:class:`ListAgents`, :class:`Tree`, :class:`Shutdown`, :class:`CastFailed`, :class:`RunFrame`,
:class:`RunSignal`.
Worker -> main: :class:`Hello`, :class:`Stats` (also the heartbeat), :class:`Cast` and
:class:`Call` (for agents elsewhere), :class:`NameAdded`, :class:`NameRemoved`,
:class:`Removed`, :class:`GroupJoined`, :class:`GroupLeft`, :class:`GroupCast`,
:class:`CastFailed`, :class:`RunOp`. Both ways: :class:`Ok`, :class:`Err`. The watchdog socket,
worker -> main: :class:`Blocked`.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from operator import attrgetter
from typing import Any, ClassVar, TypeVar, dataclass_transform


class Op(enum.StrEnum):
    """The operation a frame carries (its first element on the wire)."""

    SPAWN = "spawn"
    STOP = "stop"
    CAST = "cast"
    CALL = "call"
    INFO = "info"
    LIST = "list"
    TREE = "tree"
    SHUTDOWN = "shutdown"
    HELLO = "hello"
    STATS = "stats"
    NAME_ADDED = "name+"
    NAME_REMOVED = "name-"
    REMOVED = "removed"
    GROUP_JOINED = "group+"
    GROUP_LEFT = "group-"
    GROUP_CAST = "gcast"
    OK = "ok"
    ERR = "err"
    CAST_FAILED = "cast-failed"
    BLOCKED = "blocked"
    RUN_FRAME = "run-frame"
    RUN_SIGNAL = "run-signal"
    RUN_OP = "run-op"


class MalformedFrame(ValueError):
    """An array from the other side is not a frame: unknown op, wrong field count or type."""


_Optional = (str, type(None))
_Number = (int, float)
_Anything = object


class Frame:
    """Base of every frame; subclasses are slotted dataclasses registered under their ``op``."""

    __slots__ = ()
    op: ClassVar[Op]
    #: Per field, the types a decoded value must have (checked in :func:`decode`).
    checks: ClassVar[tuple[type | tuple[type, ...], ...]]
    _wire: ClassVar[str]
    _values: ClassVar[Callable[[Any], tuple[Any, ...]]]

    def encode(self) -> list[Any]:
        """The wire form: ``[op, field, ...]``."""
        cls = type(self)
        return [cls._wire, *cls._values(self)]


_BY_OP: dict[str, type[Frame]] = {}
F = TypeVar("F", bound=type[Frame])


@dataclass_transform()
def _frame(op: Op, *checks: type | tuple[type, ...]) -> Callable[[F], F]:
    """Make a class a slotted dataclass frame for ``op`` whose fields must have the ``checks`` types."""

    def register(cls: F) -> F:
        made = dataclasses.dataclass(slots=True)(cls)
        names = [f.name for f in dataclasses.fields(made)]  # type: ignore[arg-type]
        if len(names) != len(checks):
            raise TypeError(f"{cls.__name__}: {len(names)} fields, {len(checks)} checks")
        made.op = op
        made.checks = checks
        made._wire = op.value
        # attrgetter reads every field in C: encoding is on every cross-process call (bench agents).
        if len(names) > 1:
            made._values = attrgetter(*names)
        elif names:
            one = attrgetter(names[0])
            made._values = lambda frame: (one(frame),)
        else:
            made._values = lambda frame: ()
        _BY_OP[op.value] = made
        return made  # type: ignore[return-value]

    return register


@_frame(Op.SPAWN, int, dict, _Optional)
class Spawn(Frame):
    """Start an agent from a child spec (JSON form), under ``supervisor`` (None: the worker's root)."""

    rid: int
    spec: dict[str, Any]
    supervisor: str | None


@_frame(Op.STOP, int, str)
class Stop(Frame):
    """Stop an agent for good (through its supervisor)."""

    rid: int
    agent: str


@_frame(Op.CAST, int, str, _Anything, _Optional)
class Cast(Frame):
    """A one-way message to ``to`` (an agent id or name); a failure goes back to ``sender`` when given."""

    rid: int
    to: str
    msg: Any
    sender: str | None


@_frame(Op.CALL, int, str, _Anything, _Number)
class Call(Frame):
    """A call to ``to``, answered by Ok/Err within ``timeout`` seconds."""

    rid: int
    to: str
    msg: Any
    timeout: float


@_frame(Op.INFO, int, str)
class Info(Frame):
    """One agent's snapshot."""

    rid: int
    agent: str


@_frame(Op.LIST, int)
class ListAgents(Frame):
    """Every agent of the worker."""

    rid: int


@_frame(Op.TREE, int, _Optional)
class Tree(Frame):
    """The supervision tree under ``root`` (None: the whole worker)."""

    rid: int
    root: str | None


@_frame(Op.SHUTDOWN)
class Shutdown(Frame):
    """Stop every agent (in reverse order) and exit."""


@_frame(Op.HELLO, str, int)
class Hello(Frame):
    """A worker is up and serving."""

    worker_id: str
    pid: int


@_frame(Op.STATS, dict)
class Stats(Frame):
    """A worker's counts for the metrics; also its heartbeat."""

    stats: dict[str, Any]


@_frame(Op.NAME_ADDED, str, str)
class NameAdded(Frame):
    """An agent took a name."""

    name: str
    agent_id: str


@_frame(Op.NAME_REMOVED, str, str)
class NameRemoved(Frame):
    """An agent's name was released (it stopped, or unregistered)."""

    name: str
    agent_id: str


@_frame(Op.REMOVED, str)
class Removed(Frame):
    """An agent is gone for good: do not bring it back with its worker."""

    agent_id: str


@_frame(Op.GROUP_JOINED, str, str)
class GroupJoined(Frame):
    """An agent joined a process group."""

    group: str
    agent_id: str


@_frame(Op.GROUP_LEFT, str, str)
class GroupLeft(Frame):
    """An agent left a process group."""

    group: str
    agent_id: str


@_frame(Op.GROUP_CAST, str, _Anything, str, _Optional)
class GroupCast(Frame):
    """A cast to a process group (``mode`` "all" or "one")."""

    group: str
    msg: Any
    mode: str
    sender: str | None


@_frame(Op.OK, int, _Anything)
class Ok(Frame):
    """The answer to request ``rid``."""

    rid: int
    value: Any


@_frame(Op.ERR, int, str, str)
class Err(Frame):
    """Request ``rid`` failed with an agentd error code and a message."""

    rid: int
    code: str
    message: str


@_frame(Op.CAST_FAILED, str, str, str, str)
class CastFailed(Frame):
    """``sender``'s cast to ``to`` could not be delivered (it gets a DeliveryFailed info message)."""

    sender: str
    to: str
    code: str
    message: str


@_frame(Op.BLOCKED, str, _Number)
class Blocked(Frame):
    """The watchdog: the worker's loop has been held for ``seconds`` by ``agent`` ("" when none)."""

    agent: str
    seconds: float


@_frame(Op.RUN_FRAME, int, dict)
class RunFrame(Frame):
    """Durable runs, main -> worker: handle one frame of a run (``delivery``: run, frame, state, replay;
    see agentd.runs.context); answered by Ok with the outcome when the handler returns."""

    rid: int
    delivery: dict[str, Any]


@_frame(Op.RUN_SIGNAL, str, int, str)
class RunSignal(Frame):
    """Durable runs, main -> worker: ``kind`` "cancel", "interrupt" or "forget" for a run's delivery."""

    run_id: str
    delivery_id: int
    kind: str


@_frame(Op.RUN_OP, int, str, int, str, dict)
class RunOp(Frame):
    """Durable runs, worker -> main: one effect of a run's handler (emit, step, checkpoint, history,
    complete, fail), answered by Ok with ``{"value": ...}`` or ``{"error": reason, "message": ...}``."""

    rid: int
    run_id: str
    delivery_id: int
    name: str
    args: dict[str, Any]


def decode(raw: Any) -> Frame:
    """The frame an array read from the other side encodes; MalformedFrame when it is not one."""
    if not isinstance(raw, list) or not raw:
        raise MalformedFrame(f"a frame is a non-empty array, got {raw!r:.80}")
    op = raw[0]
    cls = _BY_OP.get(op) if isinstance(op, str) else None
    if cls is None:
        raise MalformedFrame(f"unknown op {op!r:.80}")
    checks = cls.checks
    args = raw[1:]
    if len(args) != len(checks):
        raise MalformedFrame(f"{op} takes {len(checks)} fields, got {len(args)}")
    for value, kind in zip(args, checks):  # noqa: B905 - lengths checked just above
        if not isinstance(value, kind):
            raise MalformedFrame(_wrong_field(op, args, checks))
    return cls(*args)


def _wrong_field(op: str, args: list[Any], checks: tuple[type | tuple[type, ...], ...]) -> str:
    for index, (value, kind) in enumerate(zip(args, checks, strict=True), start=1):
        if not isinstance(value, kind):
            return f"{op}: field {index} is a {type(value).__name__}, not {_name(kind)}"
    return f"{op}: malformed"


def _name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("None" if k is type(None) else k.__name__ for k in kinds)


def encode(frame: Frame) -> list[Any]:
    """The wire form of a frame (``[op, field, ...]``)."""
    return frame.encode()
