"""The operations between the agentd main process and its workers, as typed frames.

Every frame is one of the typed records below (a ``NamedTuple`` per operation); its
:class:`Op` (:func:`op_of`) names it on the wire, where a frame is a msgpack array
``[op, field, ...]`` in field order (:func:`encode`). Everything read from a socket
goes through :func:`decode`, the one place that turns an array back into a frame and
refuses an unknown op, a wrong number of fields or a field of the wrong type
(:class:`MalformedFrame`).

Why ``NamedTuple`` rather than a dataclass: a frame is on every cross-process call
(``python -m bench agents``, ``cross_process_call_p50_us``). A tuple is built from the
decoded array in C (no ``__init__`` call), its fields are read by C descriptors, and
it goes to msgpack as it is; with slotted dataclasses the typed frames cost ~13 µs of
CPU per call on each side on this (loaded) machine, over the untyped lists they replaced.
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

import enum
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar


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

F = TypeVar("F", bound=type[tuple[Any, ...]])

#: Frame class -> its op, and -> the op's wire string (what :func:`encode` puts first).
OP_OF: dict[type, Op] = {}
WIRE: dict[type, str] = {}
#: op wire string -> (frame class, the types its fields must have), in registration order.
_SPECS: dict[str, tuple[type, tuple[type | tuple[type, ...], ...]]] = {}


def _frame(op: Op, *checks: type | tuple[type, ...]) -> Callable[[F], F]:
    """Register a NamedTuple as the frame for ``op`` whose fields must have the ``checks`` types."""

    def register(cls: F) -> F:
        fields = getattr(cls, "_fields", ())
        if len(fields) != len(checks):
            raise TypeError(f"{cls.__name__}: {len(fields)} fields, {len(checks)} checks")
        OP_OF[cls] = op
        WIRE[cls] = op.value
        _SPECS[op.value] = (cls, checks)
        return cls

    return register


@_frame(Op.SPAWN, int, dict, _Optional)
class Spawn(NamedTuple):
    """Start an agent from a child spec (JSON form), under ``supervisor`` (None: the worker's root)."""

    rid: int
    spec: dict[str, Any]
    supervisor: str | None


@_frame(Op.STOP, int, str)
class Stop(NamedTuple):
    """Stop an agent for good (through its supervisor)."""

    rid: int
    agent: str


@_frame(Op.CAST, int, str, _Anything, _Optional)
class Cast(NamedTuple):
    """A one-way message to ``to`` (an agent id or name); a failure goes back to ``sender`` when given."""

    rid: int
    to: str
    msg: Any
    sender: str | None


@_frame(Op.CALL, int, str, _Anything, _Number)
class Call(NamedTuple):
    """A call to ``to``, answered by Ok/Err within ``timeout`` seconds."""

    rid: int
    to: str
    msg: Any
    timeout: float


@_frame(Op.INFO, int, str)
class Info(NamedTuple):
    """One agent's snapshot."""

    rid: int
    agent: str


@_frame(Op.LIST, int)
class ListAgents(NamedTuple):
    """Every agent of the worker."""

    rid: int


@_frame(Op.TREE, int, _Optional)
class Tree(NamedTuple):
    """The supervision tree under ``root`` (None: the whole worker)."""

    rid: int
    root: str | None


@_frame(Op.SHUTDOWN)
class Shutdown(NamedTuple):
    """Stop every agent (in reverse order) and exit."""


@_frame(Op.HELLO, str, int)
class Hello(NamedTuple):
    """A worker is up and serving."""

    worker_id: str
    pid: int


@_frame(Op.STATS, dict)
class Stats(NamedTuple):
    """A worker's counts for the metrics; also its heartbeat."""

    stats: dict[str, Any]


@_frame(Op.NAME_ADDED, str, str)
class NameAdded(NamedTuple):
    """An agent took a name."""

    name: str
    agent_id: str


@_frame(Op.NAME_REMOVED, str, str)
class NameRemoved(NamedTuple):
    """An agent's name was released (it stopped, or unregistered)."""

    name: str
    agent_id: str


@_frame(Op.REMOVED, str)
class Removed(NamedTuple):
    """An agent is gone for good: do not bring it back with its worker."""

    agent_id: str


@_frame(Op.GROUP_JOINED, str, str)
class GroupJoined(NamedTuple):
    """An agent joined a process group."""

    group: str
    agent_id: str


@_frame(Op.GROUP_LEFT, str, str)
class GroupLeft(NamedTuple):
    """An agent left a process group."""

    group: str
    agent_id: str


@_frame(Op.GROUP_CAST, str, _Anything, str, _Optional)
class GroupCast(NamedTuple):
    """A cast to a process group (``mode`` "all" or "one")."""

    group: str
    msg: Any
    mode: str
    sender: str | None


@_frame(Op.OK, int, _Anything)
class Ok(NamedTuple):
    """The answer to request ``rid``."""

    rid: int
    value: Any


@_frame(Op.ERR, int, str, str)
class Err(NamedTuple):
    """Request ``rid`` failed with an agentd error code and a message."""

    rid: int
    code: str
    message: str


@_frame(Op.CAST_FAILED, str, str, str, str)
class CastFailed(NamedTuple):
    """``sender``'s cast to ``to`` could not be delivered (it gets a DeliveryFailed info message)."""

    sender: str
    to: str
    code: str
    message: str


@_frame(Op.BLOCKED, str, _Number)
class Blocked(NamedTuple):
    """The watchdog: the worker's loop has been held for ``seconds`` by ``agent`` ("" when none)."""

    agent: str
    seconds: float


@_frame(Op.RUN_FRAME, int, dict)
class RunFrame(NamedTuple):
    """Durable runs, main -> worker: handle one frame of a run (``delivery``: run, frame, state, replay;
    see agentd.runs.context); answered by Ok with the outcome when the handler returns."""

    rid: int
    delivery: dict[str, Any]


@_frame(Op.RUN_SIGNAL, str, int, str)
class RunSignal(NamedTuple):
    """Durable runs, main -> worker: ``kind`` "cancel", "interrupt" or "forget" for a run's delivery."""

    run_id: str
    delivery_id: int
    kind: str


@_frame(Op.RUN_OP, int, str, int, str, dict)
class RunOp(NamedTuple):
    """Durable runs, worker -> main: one effect of a run's handler (emit, step, checkpoint, history,
    complete, fail), answered by Ok with ``{"value": ...}`` or ``{"error": reason, "message": ...}``."""

    rid: int
    run_id: str
    delivery_id: int
    name: str
    args: dict[str, Any]


#: Any frame (what a channel carries).
Frame = (Spawn | Stop | Cast | Call | Info | ListAgents | Tree | Shutdown | Hello | Stats | NameAdded | NameRemoved
         | Removed | GroupJoined | GroupLeft | GroupCast | Ok | Err | CastFailed | Blocked | RunFrame | RunSignal
         | RunOp)
#: The frames that ask for an answer (Ok/Err with their ``rid``, their first field).
Request = Spawn | Stop | Cast | Call | Info | ListAgents | Tree | RunFrame | RunOp
R = TypeVar("R", bound=Request)


def with_rid(frame: R, rid: int) -> R:
    """``frame`` with request id ``rid`` (frames are immutable; the tuple is rebuilt in C)."""
    stamped: R = tuple.__new__(type(frame), (rid, *frame[1:]))
    return stamped


#: The ops most frames carry, tested first by :func:`decode` (a call is a Call, then an Ok).
_HOT = ("ok", "call", "cast", "err", "stats")


def _build_decoder() -> Callable[[Any], Frame]:
    """:func:`decode`, written out as one function: per op (the hot ones first) its arity, one ``isinstance``
    per typed field (none for ``Any``), then the tuple built in C from the array's fields.

    One generated function rather than a loop over (field, type) pairs and a constructor call: decoding
    is on every cross-process call (``python -m bench agents``, ``cross_process_call_p50_us``), where
    the generic form cost several µs of CPU per call on each side on this (loaded) machine.
    """
    namespace: dict[str, Any] = {"new": tuple.__new__, "not_a_frame": _not_a_frame, "wrong": _wrong_field}
    lines = ["def decode(raw):",
             "    if type(raw) is not list or not raw:",
             "        raise not_a_frame(raw)",
             "    op = raw[0]"]
    ordered = [*_HOT, *(op for op in _SPECS if op not in _HOT)]
    for number, op in enumerate(ordered):
        cls, checks = _SPECS[op]
        namespace[f"c{number}"] = cls
        terms = [f"len(raw) == {len(checks) + 1}"]
        for index, kind in enumerate(checks, start=1):
            if kind is not _Anything:
                namespace[f"t{number}_{index}"] = kind
                terms.append(f"isinstance(raw[{index}], t{number}_{index})")
        lines += [f"    {'if' if number == 0 else 'elif'} op == {op!r}:",
                  f"        if {' and '.join(terms)}:",
                  f"            return new(c{number}, raw[1:])",
                  f"        raise wrong({op!r}, raw)"]
    lines.append("    raise not_a_frame(raw)")
    exec("\n".join(lines) + "\n", namespace)  # noqa: S102 - our own generated code over our own type table
    decoder: Callable[[Any], Frame] = namespace["decode"]
    return decoder


def _not_a_frame(raw: Any) -> MalformedFrame:
    if type(raw) is not list or not raw:
        return MalformedFrame(f"a frame is a non-empty array, got {raw!r:.80}")
    return MalformedFrame(f"unknown op {raw[0]!r:.80}")


def _wrong_field(op: str, raw: list[Any]) -> MalformedFrame:
    checks = _SPECS[op][1]
    if len(raw) != len(checks) + 1:
        return MalformedFrame(f"{op} takes {len(checks)} fields, got {len(raw) - 1}")
    for index, (value, kind) in enumerate(zip(raw[1:], checks, strict=True), start=1):
        if not isinstance(value, kind):
            return MalformedFrame(f"{op}: field {index} is a {type(value).__name__}, not {_name(kind)}")
    return MalformedFrame(f"{op}: malformed")


def _name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("None" if k is type(None) else k.__name__ for k in kinds)


def encode(frame: Frame) -> list[Any]:
    """The wire form of a frame: ``[op, field, ...]`` (:class:`agentd.ipc.Channel` writes the same inline)."""
    return [WIRE[type(frame)], *frame]


def op_of(frame: Frame) -> Op:
    """The operation a frame carries."""
    return OP_OF[type(frame)]


#: The one place an array read from the other side becomes a frame: ``decode(raw) -> Frame``, or
#: MalformedFrame naming what is wrong (not an array, an unknown op, the wrong number of fields, a field
#: of the wrong type). Generated from the frame table by :func:`_build_decoder`.
decode: Callable[[Any], Frame] = _build_decoder()
