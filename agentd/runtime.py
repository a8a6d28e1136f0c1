"""The runtime: one event loop's agents, their names, the root supervisor, and local send/call/spawn.

Use it as an async context manager::

    registry = AgentRegistry()
    registry.register("counter", Counter)
    async with Runtime(registry) as rt:
        ref = await rt.spawn("counter", {"start": 1}, name="c1")
        rt.send("c1", 5)
        assert await rt.call(ref, "get") == 6

Messages to agents of this runtime stay in-process (Python objects, not copied:
send immutable data). A destination the runtime does not host goes to its
:class:`Router` (a worker forwards to the agentd main process; the mesh wires
cross-node delivery there) -- the one hook for everything outside this loop.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from agentd.behaviour import Agent, AgentRef, DeliveryFailed
from agentd.codec import Codec, codec
from agentd.errors import AgentError, AlreadyExists, InvalidArgument, NoSuchAgent, Unavailable
from agentd.groups import GROUP_MODES, GroupTable
from agentd.process import CAST, INFO, AgentProcess, TaskScope
from agentd.store import CheckpointStore
from agentd.supervision import ChildSpec, Restart, StartSpec

log = logging.getLogger("agentd.runtime")

#: Handling-latency histogram bucket upper bounds, seconds (Prometheus-style, cumulative on export).
LATENCY_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)

#: (child spec, attempt, last exit reason) -> new start args, or None to keep them.
RestartPolicy = Callable[[ChildSpec, int, str], "dict[str, Any] | None"]


class AgentRegistry:
    """The allow-list of agent types: names mapped to classes. Nothing else can be started."""

    def __init__(self) -> None:
        self._types: dict[str, type[Agent]] = {}
        from agentd.supervisor import DynamicSupervisor, Supervisor

        self.register("supervisor", Supervisor)
        self.register("dynamic_supervisor", DynamicSupervisor)

    def register(self, name: str, cls: type[Agent]) -> None:
        """Allow ``cls`` to be started as ``name``."""
        if not (isinstance(cls, type) and issubclass(cls, Agent)):
            raise TypeError(f"{cls!r} is not an Agent subclass")
        self._types[name] = cls

    def load_entry_points(self, group: str = "mabeam.agents") -> list[str]:
        """Register the agent types installed packages declare under an entry-point group."""
        from importlib.metadata import entry_points

        loaded = []
        for entry in entry_points(group=group):
            self.register(entry.name, entry.load())
            loaded.append(entry.name)
        return loaded

    def load_path(self, name: str, path: str) -> None:
        """Register ``module:Class`` (from trusted local config, never from the network)."""
        import importlib

        module_name, _, attr = path.partition(":")
        if not attr:
            raise ValueError(f"agent type path {path!r} must look like 'package.module:Class'")
        self.register(name, getattr(importlib.import_module(module_name), attr))

    def get(self, name: str) -> type[Agent]:
        """The class for a type name; InvalidArgument for a type not on the allow-list."""
        try:
            return self._types[name]
        except KeyError:
            raise InvalidArgument(f"unknown agent type {name!r}; registered types: {sorted(self._types)}") from None

    def names(self) -> list[str]:
        """The registered type names."""
        return sorted(self._types)


class Router(Protocol):
    """Where messages for agents this runtime does not host go (another worker, another node)."""

    def cast(self, to: AgentRef | str, msg: Any, sender: AgentRef | None) -> None:
        """Deliver a cast; failures come back to ``sender`` as a DeliveryFailed info message."""
        ...

    async def call(self, to: AgentRef | str, msg: Any, timeout: float) -> Any:
        """Deliver a call and return the reply (or raise the typed error)."""
        ...

    def name_registered(self, name: str, ref: AgentRef) -> None:
        """An agent of this runtime took a name (publish it to the mesh registry)."""
        ...

    def name_unregistered(self, name: str, ref: AgentRef) -> None:
        """An agent of this runtime gave up a name (it exited)."""
        ...

    def agent_removed(self, agent_id: str) -> None:
        """An agent was removed from its supervisor for good (it will not be restarted)."""
        ...

    def group_joined(self, group: str, ref: AgentRef) -> None:
        """An agent of this runtime joined a process group."""
        ...

    def group_left(self, group: str, ref: AgentRef) -> None:
        """An agent of this runtime left a process group (or exited while in it)."""
        ...

    def send_group(self, group: str, msg: Any, mode: str, sender: AgentRef | None) -> None:
        """Cast to a group's members wherever they are (``mode`` "all" or "one")."""
        ...


class LocalOnly:
    """The router of a stand-alone runtime: nothing exists outside it."""

    def cast(self, to: AgentRef | str, msg: Any, sender: AgentRef | None) -> None:
        """Unknown destination: NOT_FOUND."""
        raise NoSuchAgent(f"no agent {to}")

    async def call(self, to: AgentRef | str, msg: Any, timeout: float) -> Any:
        """Unknown destination: NOT_FOUND."""
        raise NoSuchAgent(f"no agent {to}")

    def name_registered(self, name: str, ref: AgentRef) -> None:
        """Nothing to publish."""

    def name_unregistered(self, name: str, ref: AgentRef) -> None:
        """Nothing to publish."""

    def agent_removed(self, agent_id: str) -> None:
        """Nothing to forget."""

    def group_joined(self, group: str, ref: AgentRef) -> None:
        """Nothing to publish."""

    def group_left(self, group: str, ref: AgentRef) -> None:
        """Nothing to publish."""

    def send_group(self, group: str, msg: Any, mode: str, sender: AgentRef | None) -> None:
        """Unused: a stand-alone runtime delivers group casts itself."""
        raise NoSuchAgent(f"no members in group {group!r}")


@dataclass(frozen=True)
class AgentInfo:
    """Introspection of one agent (an immutable snapshot)."""

    agent_id: str
    name: str | None
    type: str
    status: str
    supervisor: str | None
    restarts: int
    last_error: str
    mailbox_depth: int
    mailbox_capacity: int
    handled: int
    memory_bytes: int
    checkpoint_version: int
    is_supervisor: bool


class Runtime:
    """Hosts agents on the running event loop; see the module docstring."""

    def __init__(self, registry: AgentRegistry, *, node_id: str = "", store: CheckpointStore | None = None,
                 codec_name: str = "msgpack", mailbox_capacity: int = 1000, router: Router | None = None,
                 restart_policy: RestartPolicy | None = None, clock: Callable[[], float] = time.monotonic,
                 root_max_restarts: int = 1000, root_max_seconds: float = 1.0) -> None:
        self.registry = registry
        self.node_id = node_id
        self.store = store if store is not None else CheckpointStore(":memory:")
        self.codec: Codec = codec(codec_name)
        self.mailbox_capacity = mailbox_capacity
        self.router: Router = router or LocalOnly()
        self.restart_policy = restart_policy
        self.clock = clock
        self.current_agent: str | None = None
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.restart_reasons: dict[str, int] = {}
        self._procs: dict[str, AgentProcess] = {}
        self._names: dict[str, str] = {}
        #: Process groups of this runtime's agents (members: agent ids).
        self.groups: GroupTable[str] = GroupTable()
        self._ids = itertools.count(1)
        self._scope = TaskScope()
        self._root_args = {"max_restarts": root_max_restarts, "max_seconds": root_max_seconds}
        self.root: AgentProcess | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the root dynamic supervisor (``root``)."""
        spec = ChildSpec(id="root", start=StartSpec(type="dynamic_supervisor", args=self._root_args),
                         shutdown=float("inf"))
        self.root = self.start_process("root", spec, parent=None, scope=self._scope)
        await self.root.started

    async def stop(self) -> None:
        """Shut the whole tree down (children in reverse order, each within its shutdown timeout)."""
        root = self.root
        if root is not None and not root.done:
            root.parent_stopping = True
            from agentd.process import SHUTDOWN

            root.mailbox.put_system((SHUTDOWN, "shutdown", None))
            await root.wait()
        await self._scope.aclose()

    def start_process(self, agent_id: str, spec: ChildSpec, parent: AgentProcess | None, scope: TaskScope,
                      restart_count: int = 0, last_error: str = "") -> AgentProcess:
        """Create an agent incarnation and start its task in ``scope`` (supervisors call this)."""
        cls = self.registry.get(spec.start.type)
        if spec.name is not None:
            owner = self._names.get(spec.name)
            if owner is not None and owner != agent_id:
                raise AlreadyExists(f"name {spec.name!r} is registered by {owner}")
        proc = AgentProcess(self, agent_id, spec, cls(), parent, restart_count, last_error)
        self._procs[agent_id] = proc
        if spec.name is not None:
            self._names[spec.name] = agent_id
            self.router.name_registered(spec.name, proc.self_ref)
        proc.owner_scope = scope
        proc.task = scope.start_agent(proc)
        return proc

    def unregister(self, proc: AgentProcess) -> None:
        """Forget an exited incarnation's id and name (called when it exits)."""
        if self._procs.get(proc.agent_id) is proc:
            del self._procs[proc.agent_id]
            name = proc.spec.name
            if name is not None and self._names.get(name) == proc.agent_id:
                del self._names[name]
                self.router.name_unregistered(name, proc.self_ref)
            if proc.agent_id in self.groups:  # membership ends with the agent, like a name
                for group in self.groups.leave_all(proc.agent_id):
                    self.router.group_left(group, proc.self_ref)

    # --- addressing ---------------------------------------------------------------------------

    def local_process(self, to: AgentRef | str) -> AgentProcess | None:
        """The live local incarnation for a ref, an agent id or a registered name; None if not here."""
        if isinstance(to, AgentRef):
            if to.node_id and to.node_id != self.node_id:
                return None
            return self._procs.get(to.agent_id)
        agent_id = self._names.get(to)
        return self._procs.get(agent_id if agent_id is not None else to)

    def whereis(self, name: str) -> AgentRef | None:
        """The ref of a locally registered name."""
        agent_id = self._names.get(name)
        return None if agent_id is None else AgentRef(agent_id, self.node_id)

    def processes(self) -> Iterator[AgentProcess]:
        """Every live local incarnation."""
        return iter(list(self._procs.values()))

    def __len__(self) -> int:
        return len(self._procs)

    def next_id(self) -> int:
        """A fresh integer, unique in this runtime (timer and monitor ids)."""
        return next(self._ids)

    # --- messaging ----------------------------------------------------------------------------

    def send(self, to: AgentRef | str, msg: Any, sender: AgentProcess | None = None) -> None:
        """Cast: into the local mailbox (MailboxFull / NoSuchAgent raised here) or to the router."""
        proc = self.local_process(to)
        if proc is not None:
            proc.mailbox.put_nowait((CAST, msg, None))
            return
        self.router.cast(to, msg, sender.self_ref if sender is not None else None)

    def send_info(self, to: AgentRef | str, msg: Any) -> None:
        """Deliver an info message (bypasses the bound, like every runtime-generated message)."""
        proc = self.local_process(to)
        if proc is None:
            raise NoSuchAgent(f"no agent {to}")
        proc.mailbox.put_system((INFO, msg, None))

    def delivery_failed(self, sender: AgentRef | str, to: str, error: AgentError) -> None:
        """Tell a sender that its cast to another process failed (never a silent drop)."""
        proc = self.local_process(sender)
        if proc is not None:
            proc.mailbox.put_system((INFO, DeliveryFailed(to, error.code.name, error.message), None))

    # --- process groups (Erlang pg) -----------------------------------------------------------

    def join_group(self, group: str, proc: AgentProcess) -> None:
        """Make an agent a member of ``group`` (again: no change); published through the router."""
        if not group or not isinstance(group, str):
            raise InvalidArgument("group: a non-empty string is required")
        if self.groups.join(group, proc.agent_id):
            self.router.group_joined(group, proc.self_ref)

    def leave_group(self, group: str, proc: AgentProcess) -> None:
        """End an agent's membership of ``group`` (no error when it was not a member)."""
        if self.groups.leave(group, proc.agent_id):
            self.router.group_left(group, proc.self_ref)

    def group_members(self, group: str) -> list[AgentRef]:
        """This runtime's members of ``group``, sorted by agent id."""
        return [AgentRef(agent_id, self.node_id) for agent_id in self.groups.members(group)]

    def send_group(self, group: str, msg: Any, mode: str = "all", sender: AgentProcess | None = None) -> None:
        """Cast to every member of ``group`` (``all``) or to the next one in turn (``one``).

        Inside a worker the router delivers (the agentd main process knows the members of
        every worker and of the mesh). A stand-alone runtime delivers itself: NoSuchAgent
        for an empty group; a member's full mailbox comes back to ``sender`` as
        DeliveryFailed (without a sender, the first such error is raised after the others got it).
        """
        if mode not in GROUP_MODES:
            raise InvalidArgument(f"mode: {mode!r} is not one of {GROUP_MODES}")
        sender_ref = sender.self_ref if sender is not None else None
        if not isinstance(self.router, LocalOnly):
            self.router.send_group(group, msg, mode, sender_ref)
            return
        if mode == "one":
            picked = self.groups.pick(group)
            targets = [] if picked is None else [picked]
        else:
            targets = self.groups.members(group)
        if not targets:
            raise NoSuchAgent(f"no members in group {group!r}")
        failure: AgentError | None = None
        for agent_id in targets:
            proc = self._procs.get(agent_id)
            if proc is None:
                continue
            try:
                proc.mailbox.put_nowait((CAST, msg, None))
            except AgentError as exc:
                if sender_ref is not None:
                    self.delivery_failed(sender_ref, agent_id, exc)
                elif failure is None:
                    failure = exc
        if failure is not None:
            raise failure

    async def call(self, to: AgentRef | str, msg: Any, timeout: float = 5.0) -> Any:
        """Call an agent (local or through the router) and return its reply."""
        proc = self.local_process(to)
        if proc is not None:
            return await proc.call_local(msg, timeout)
        return await self.router.call(to, msg, timeout)

    # --- spawning and stopping ------------------------------------------------------------------

    def _supervisor(self, supervisor: AgentRef | str | None) -> AgentProcess:
        if supervisor is None:
            if self.root is None or self.root.done:
                raise Unavailable("the runtime is not running")
            return self.root
        proc = self.local_process(supervisor)
        if proc is None:
            raise NoSuchAgent(f"no supervisor {supervisor}")
        return proc

    async def spawn(self, agent_type: str, args: dict[str, Any] | None = None, *, name: str | None = None,
                    supervisor: AgentRef | str | None = None, child_id: str | None = None,
                    restart: Restart = Restart.TEMPORARY, shutdown: float | str = 5.0) -> AgentRef:
        """Start an agent under a dynamic supervisor (root by default) and wait for its ``init``."""
        self.registry.get(agent_type)
        try:
            spec = ChildSpec(id=child_id or name or f"{agent_type}-{self.next_id()}",
                             start=StartSpec(type=agent_type, args=args or {}), restart=restart,
                             shutdown=shutdown, name=name)  # type: ignore[arg-type]
        except ValueError as exc:
            raise InvalidArgument(f"invalid spawn request: {exc}") from None
        return await self.start_child(spec, supervisor)

    async def start_child(self, spec: ChildSpec, supervisor: AgentRef | str | None = None) -> AgentRef:
        """Start a child from its spec under a supervisor (root by default); returns its ref."""
        if spec.name is not None and spec.name in self._names:
            raise AlreadyExists(f"name {spec.name!r} is registered by {self._names[spec.name]}")
        sup = self._supervisor(supervisor)
        if not sup.agent.is_supervisor:
            raise InvalidArgument(f"{sup.agent_id} is not a supervisor")
        # No deadline of our own: the child's init is bounded by its handle_timeout.
        result: AgentRef = await sup.call_local(("start_child", spec), timeout=None)
        return result

    async def stop_agent(self, to: AgentRef | str, timeout: float = 60.0) -> None:
        """Terminate an agent through its supervisor (no restart; its checkpoint is deleted)."""
        proc = self.local_process(to)
        if proc is None:
            raise NoSuchAgent(f"no agent {to}")
        if proc.parent is None:
            raise InvalidArgument("the root supervisor cannot be stopped; stop the runtime")
        await proc.parent.call_local(("terminate_child", proc.spec.id), timeout=timeout)

    # --- checkpoints --------------------------------------------------------------------------

    def save_checkpoint(self, agent_id: str, state: Any) -> int:
        """Encode and store an agent's state; returns the version."""
        return self.store.put(agent_id, self.codec.name, self.codec.encode(state))

    def load_checkpoint(self, agent_id: str) -> tuple[Any, int] | None:
        """(decoded state, version) of an agent's last checkpoint, or None."""
        saved = self.store.get(agent_id)
        if saved is None:
            return None
        codec_name, data, version = saved
        return codec(codec_name).decode(data), version

    def delete_checkpoint(self, agent_id: str) -> None:
        """Forget a checkpoint (the agent was removed from its supervisor for good)."""
        self.store.delete(agent_id)
        self.router.agent_removed(agent_id)

    # --- introspection and metrics ------------------------------------------------------------

    def observe_handling(self, seconds: float) -> None:
        """Record one callback's duration in the handling-latency histogram."""
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def record_restart(self, reason: str) -> None:
        """Count a restart by (the kind of) its reason."""
        kind = reason.split(":", 1)[0]
        self.restart_reasons[kind] = self.restart_reasons.get(kind, 0) + 1

    def info(self, to: AgentRef | str) -> AgentInfo:
        """A snapshot of one agent; NoSuchAgent when it is not here."""
        proc = self.local_process(to)
        if proc is None:
            raise NoSuchAgent(f"no agent {to}")
        return self._info(proc)

    def _info(self, proc: AgentProcess) -> AgentInfo:
        import sys

        stats = proc.mailbox.statistics()
        memory = sys.getsizeof(proc) + sys.getsizeof(proc.agent) + sys.getsizeof(proc.state)
        return AgentInfo(agent_id=proc.agent_id, name=proc.spec.name, type=proc.spec.start.type,
                         status=proc.status, supervisor=proc.parent.agent_id if proc.parent else None,
                         restarts=proc.restart_count, last_error=proc.last_error, mailbox_depth=stats.depth,
                         mailbox_capacity=stats.capacity, handled=proc.handled, memory_bytes=memory,
                         checkpoint_version=proc.checkpoint_version,
                         is_supervisor=proc.agent.is_supervisor)

    def list_agents(self) -> list[AgentInfo]:
        """Snapshots of every live agent (supervisors included)."""
        return [self._info(proc) for proc in self.processes()]

    def tree(self, to: AgentRef | str | None = None) -> dict[str, Any]:
        """The supervision tree under ``to`` (root by default) as nested dicts."""
        proc = self._supervisor(to) if to is not None else self._supervisor(None)
        return self._tree(proc)

    def _tree(self, proc: AgentProcess) -> dict[str, Any]:
        node: dict[str, Any] = {"agent_id": proc.agent_id, "name": proc.spec.name, "type": proc.spec.start.type,
                                "status": proc.status, "restarts": proc.restart_count, "children": []}
        children = getattr(proc.agent, "child_processes", None)
        if children is not None:
            strategy = getattr(proc.agent, "strategy_name", "")
            node["strategy"] = strategy
            node["children"] = [self._tree(child) for child in children()]
        return node

    def count_by_status(self) -> dict[str, int]:
        """How many live agents are in each status (starting, idle, running, terminating)."""
        counts: dict[str, int] = {}
        for proc in self._procs.values():
            counts[proc.status] = counts.get(proc.status, 0) + 1
        return counts
