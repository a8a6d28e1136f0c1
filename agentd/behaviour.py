"""The agent behaviour: a class of callbacks that are state transitions; the runtime owns the loop.

Define an agent type by subclassing :class:`Agent` and registering it::

    class Counter(Agent):
        async def init(self, args):
            return {"n": args.get("start", 0)}

        async def handle_cast(self, msg, state):
            return {"n": state["n"] + msg}

        async def handle_call(self, msg, state):
            return state["n"], state

    registry.register("counter", Counter)

The runtime calls one callback at a time per agent. ``self.ctx`` is the agent's
:class:`Context` (its ref, send/call/spawn, timers, monitors, links, checkpoints).

Durable runs (docs/runs.md) drive an agent type through one more callback,
``handle_frame(frame, run)``: each input :class:`Frame` of a run, in order, one at
a time, with the :class:`Run` context to emit events, checkpoint, read the run's
history and take memoized durable steps::

    class Summarizer(Agent):
        async def handle_frame(self, frame, run):
            text = await run.step("fetch", lambda: fetch(frame.payload["url"]))  # once, even after a crash
            await run.emit("summary", {"text": text[:100]})
            await run.complete({"chars": len(text)})
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel

from agentd.errors import CallNotHandled

if TYPE_CHECKING:
    from agentd.mailbox import MailboxStatistics


@dataclass(frozen=True, slots=True)
class AgentRef:
    """The address of an agent: its stable id (supervision path) on a node ("" means this runtime)."""

    agent_id: str
    node_id: str = ""

    def __str__(self) -> str:
        return f"{self.node_id}/{self.agent_id}" if self.node_id else self.agent_id


@dataclass(frozen=True, slots=True)
class Down:
    """Info message: a monitored agent exited (``reason`` is ``noproc`` when it did not exist)."""

    monitor_id: int
    ref: AgentRef
    reason: str


@dataclass(frozen=True, slots=True)
class Exit:
    """Info message to an agent with ``trap_exits``: a linked agent exited with ``reason``."""

    ref: AgentRef
    reason: str


@dataclass(frozen=True, slots=True)
class DeliveryFailed:
    """Info message: a cast this agent sent to another process could not be delivered (``code``: gRPC name)."""

    to: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class TimerRef:
    """A timer started with ``send_after``; pass it to ``cancel_timer``."""

    timer_id: int


class Context(Protocol):
    """What an agent can do, through ``self.ctx``."""

    @property
    def self_ref(self) -> AgentRef:
        """This agent's address."""
        ...

    @property
    def name(self) -> str | None:
        """This agent's registered name, if any."""
        ...

    @property
    def restarts(self) -> int:
        """How many times this agent has been restarted."""
        ...

    def send(self, to: AgentRef | str, msg: Any) -> None:
        """Cast ``msg`` to an agent (ref or registered name); raises MailboxFull / NoSuchAgent locally."""
        ...

    async def call(self, to: AgentRef | str, msg: Any, timeout: float = 5.0) -> Any:
        """Call an agent and wait for its reply until the deadline (CallTimeout)."""
        ...

    async def spawn(self, agent_type: str, args: dict[str, Any] | None = None, *, name: str | None = None,
                    link: bool = False, supervisor: AgentRef | str | None = None) -> AgentRef:
        """Start a temporary agent under a dynamic supervisor (the root one by default)."""
        ...

    def join_group(self, group: str) -> None:
        """Join a process group (Erlang ``pg``; cluster-wide on the mesh). A restarted agent is a new
        member only if it joins again (e.g. in ``init``): membership ends when the agent exits."""
        ...

    def leave_group(self, group: str) -> None:
        """Leave a process group (no error when not a member)."""
        ...

    def send_group(self, group: str, msg: Any, mode: str = "all") -> None:
        """Cast to every member of ``group`` cluster-wide ("all") or to one, round-robin ("one").
        Members that cannot take it come back as :class:`DeliveryFailed` info messages."""
        ...

    def send_after(self, delay: float, msg: Any, to: AgentRef | str | None = None) -> TimerRef:
        """Deliver ``msg`` to ``to`` (default: this agent's ``handle_info``) after ``delay`` seconds."""
        ...

    def cancel_timer(self, timer: TimerRef) -> bool:
        """Cancel a timer; False when it already fired."""
        ...

    def monitor(self, ref: AgentRef | str) -> int:
        """Get a :class:`Down` info message when ``ref`` exits; returns the monitor id."""
        ...

    def demonitor(self, monitor_id: int) -> None:
        """Stop monitoring."""
        ...

    def link(self, ref: AgentRef | str) -> None:
        """Exit together: an abnormal exit of either kills the other (or sends :class:`Exit` when trapping)."""
        ...

    def unlink(self, ref: AgentRef | str) -> None:
        """Remove a link."""
        ...

    async def checkpoint(self, state: Any) -> int:
        """Persist ``state``; a restart (or a restarted worker) resumes from the last one. Returns its version."""
        ...

    def stop(self, reason: str = "normal") -> None:
        """Exit after the current callback returns, with ``reason``."""
        ...

    def mailbox_statistics(self) -> MailboxStatistics:
        """This agent's mailbox snapshot."""
        ...


@dataclass(frozen=True, slots=True)
class Frame:
    """One input of a run: its client-chosen id, type, JSON payload, and the seq of its frame.received event."""

    frame_id: str
    type: str
    payload: Any
    seq: int


class RunCanceled(Exception):
    """Raised by the :class:`Run` context once the run is being canceled: start no new work, return."""


class Run(Protocol):
    """What an agent can do inside a run (the ``run`` of ``handle_frame``).

    Every effect is an event in the run's durable log, appended by the executor that holds
    the run's lease (a deposed executor's effects are refused). After a crash the frame being
    handled is delivered again and its effects are *replayed*: a ``step`` already recorded
    returns its recorded result without calling ``fn``, and an ``emit`` or ``checkpoint``
    identical to one recorded during this frame returns that event's seq instead of appending
    it again. So keep handlers deterministic between steps, and put work with side effects
    (model calls, tools, I/O) inside ``step``. Once the run is canceled, ``emit``, ``step``
    and ``checkpoint`` raise :class:`RunCanceled`.
    """

    @property
    def run_id(self) -> str:
        """The run's id."""
        ...

    @property
    def tenant(self) -> str:
        """The tenant owning the run."""
        ...

    @property
    def agent(self) -> str:
        """The agent type executing the run."""
        ...

    @property
    def state(self) -> Any:
        """The agent state of the run's last checkpoint (None before the first)."""
        ...

    @property
    def canceled(self) -> bool:
        """True once cancellation was requested: finish up and return."""
        ...

    async def emit(self, type_: str, payload: Any = None) -> int:
        """Append an event (``type_``: a-z0-9_.-, not under run./frame./step.; ``payload``: JSON); its seq."""
        ...

    async def checkpoint(self, state: Any) -> int:
        """Record the agent's state (JSON) for resumption; the seq of its run.checkpoint event."""
        ...

    async def step(self, key: str, fn: Callable[[], Any | Awaitable[Any]]) -> Any:
        """A durable step: the recorded result of ``key`` (unique within the frame's handling), or ``fn()``
        (awaited if it returns an awaitable) recorded now as a step.completed event. Results must be JSON.
        An exception from ``fn`` propagates and records nothing."""
        ...

    async def model(self, request: dict[str, Any], key: str) -> dict[str, Any]:
        """A model call as durable step ``key``: streamed into the log, answered from the log on a replay."""
        ...

    async def call(self, to: str, message: Any, timeout: float = 5.0) -> Any:
        """Call an agent by name (anywhere in the mesh); not memoized unless wrapped in :meth:`step`."""
        ...

    async def wait_approval(self, call_id: str, deadline: float, after: int = 0) -> tuple[bool, str]:
        """Wait for a human's decision on a tool call (read from the log; an expiry counts as a denial)."""
        ...

    async def history(self, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Events of this run from ``after + 1`` on (each a dict: seq, type, version, time_ms, payload)."""
        ...

    async def complete(self, output: Any = None) -> None:
        """End the run as completed with ``output`` (JSON); no further frames are delivered."""
        ...

    async def fail(self, error_class: str, message: str = "") -> None:
        """End the run as failed with an error class (e.g. "invalid_input") and a message."""
        ...


class Agent:
    """The behaviour: override the callbacks you need; each receives and returns the state.

    Class attributes tune the runtime per agent type:
    ``handle_timeout`` (seconds a callback may take before the agent is killed with
    reason ``timeout``; None disables), ``mailbox_capacity``, ``state_model`` (a pydantic
    model checkpoints are validated into), ``trap_exits`` (linked exits arrive as
    :class:`Exit` info messages instead of killing this agent).
    """

    handle_timeout: ClassVar[float | None] = 30.0
    #: What a run's frame arriving while this agent handles another does: "enqueue", "reject", "interrupt".
    input_policy: ClassVar[str] = "enqueue"
    mailbox_capacity: ClassVar[int | None] = None
    state_model: ClassVar[type[BaseModel] | None] = None
    trap_exits: ClassVar[bool] = False
    is_supervisor: ClassVar[bool] = False

    ctx: Context

    @classmethod
    def restart_policy(cls, spec: Any, attempt: int, last_reason: str) -> dict[str, Any] | None:
        """Called before restart number ``attempt`` (1, 2, ...) after an exit with ``last_reason``.

        Return new start arguments (e.g. a stronger model after N failures) or None to
        keep ``spec.start.args``. The supervisor keeps the new arguments for later restarts.
        """
        return None

    async def init(self, args: dict[str, Any]) -> Any:
        """Build the initial state from the start arguments (default: the arguments themselves)."""
        return args

    async def restore(self, args: dict[str, Any], state: Any) -> Any:
        """Resume from the last checkpoint instead of ``init`` (default: the checkpointed state as is)."""
        return state

    async def handle_cast(self, msg: Any, state: Any) -> Any:
        """A cast (no reply); returns the new state. Default: ignore."""
        return state

    async def handle_call(self, msg: Any, state: Any) -> tuple[Any, Any]:
        """A call; returns (reply, new state). Default: CallNotHandled to the caller."""
        raise CallNotHandled(f"{type(self).__name__} does not handle calls")

    async def handle_info(self, msg: Any, state: Any) -> Any:
        """Timers, monitors (:class:`Down`), trapped exits, delivery failures; returns the new state."""
        return state

    async def handle_frame(self, frame: Frame, run: Run) -> None:
        """One input frame of a durable run (see :class:`Run`). Default: the run fails (not a run agent).

        Return when the frame is handled; call ``run.complete`` / ``run.fail`` to end the run. An
        exception fails the run with error class "handler_error". Instance attributes are a cache:
        the run may move to another process or node, which starts from ``run.state``.
        """
        raise CallNotHandled(f"{type(self).__name__} does not handle run frames (no handle_frame)")

    async def code_change(self, state: Any, extra: Any) -> Any:
        """A code-change system message; returns the state in its new shape. Default: unchanged."""
        return state

    async def terminate(self, reason: str, state: Any) -> None:
        """Called on an orderly exit (shutdown, ``stop``, an error in a callback); not after a kill."""
