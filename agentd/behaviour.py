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
"""

from __future__ import annotations

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


class Agent:
    """The behaviour: override the callbacks you need; each receives and returns the state.

    Class attributes tune the runtime per agent type:
    ``handle_timeout`` (seconds a callback may take before the agent is killed with
    reason ``timeout``; None disables), ``mailbox_capacity``, ``state_model`` (a pydantic
    model checkpoints are validated into), ``trap_exits`` (linked exits arrive as
    :class:`Exit` info messages instead of killing this agent).
    """

    handle_timeout: ClassVar[float | None] = 30.0
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

    async def code_change(self, state: Any, extra: Any) -> Any:
        """A code-change system message; returns the state in its new shape. Default: unchanged."""
        return state

    async def terminate(self, reason: str, state: Any) -> None:
        """Called on an orderly exit (shutdown, ``stop``, an error in a callback); not after a kill."""
