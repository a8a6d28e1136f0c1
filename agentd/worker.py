"""A worker process: one event loop (uvloop) running a :class:`~agentd.runtime.Runtime` for the main process.

Started by :mod:`agentd.workers` as ``python -m agentd.worker --fd N --watchdog-fd M --config JSON``
(a fresh interpreter, never a fork of the main process). It serves requests from
the main process over its socketpair, forwards messages for agents it does not
host to the main process, reports statistics (the heartbeat), and runs a watchdog
thread that names the agent blocking the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import socket
import threading
import time
from typing import Any

from agentd import frames
from agentd.behaviour import AgentRef
from agentd.errors import AgentError, InvalidArgument, Unavailable, error_from_code
from agentd.ipc import Channel, send_blocking
from agentd.process import CALL, AgentProcess, TaskScope
from agentd.runs.context import RunHost
from agentd.runtime import AgentRegistry, Runtime
from agentd.store import CheckpointStore
from agentd.supervision import ChildSpec
from mabeam import logs

log = logging.getLogger("agentd.worker")

#: Exit status of a worker whose root supervisor gave up (the main process restarts it).
ROOT_GAVE_UP_EXIT = 3

#: gc thresholds for worker processes (see ``main``).
GC_THRESHOLD = (100_000, 50, 1000)


def build_registry(config: dict[str, Any]) -> AgentRegistry:
    """The allow-list from config: ``module:Class`` paths, installed entry points, the examples."""
    registry = AgentRegistry()
    if config.get("examples"):
        from agentd.examples import register_examples

        register_examples(registry)
    if config.get("entry_points", True):
        registry.load_entry_points()
    for name, path in config.get("agent_types", {}).items():
        registry.load_path(name, path)
    register_work_agents(registry, config)
    return registry


def register_work_agents(registry: AgentRegistry, config: dict[str, Any]) -> None:
    """The agent types of an agent's *work*: ``pipeline`` (always) and the LLM agents of the config.

    Both get the tool catalogue (``tools``, plus the example tools with ``examples``) and the ``tool_policy``.
    """
    from agentd.llm import load_object, make_llm_agent
    from agentd.pipelines.agent import make_pipeline_agent
    from agentd.tools.registry import Tool

    catalogue: dict[str, Tool] = {}
    if config.get("examples"):
        from agentd.example_tools import EXAMPLE_TOOLS

        catalogue.update({t.name: t for t in EXAMPLE_TOOLS})
    for name, path in config.get("tools", {}).items():
        obj = load_object(path)
        if not isinstance(obj, Tool):
            raise ValueError(f"tool {name!r}: {path!r} is not a tool (decorate the function with @tool)")
        catalogue[name] = obj
    policy = list(config.get("tool_policy", []))
    registry.register("pipeline", make_pipeline_agent(catalogue, policy))
    for name, spec in config.get("llm_agents", {}).items():
        registry.register(name, make_llm_agent(name, {**spec, "policy": [*policy, *spec.get("policy", [])]},
                                               catalogue))


def _ref(to: Any) -> AgentRef | str:
    return str(to)


class WorkerRouter:
    """Sends what this worker does not host to the main process, which routes it on."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def cast(self, to: AgentRef | str, msg: Any, sender: AgentRef | None) -> None:
        """Forward a cast; a failure comes back as DeliveryFailed to ``sender``."""
        target = to.agent_id if isinstance(to, AgentRef) else to
        self.worker.write(frames.Cast(0, target, msg, sender.agent_id if sender else None))

    async def call(self, to: AgentRef | str, msg: Any, timeout: float) -> Any:
        """Forward a call and wait for the reply."""
        target = to.agent_id if isinstance(to, AgentRef) else to
        return await self.worker.request(frames.Call(0, target, msg, timeout), timeout + 1.0)

    def name_registered(self, name: str, ref: AgentRef) -> None:
        """Tell the main process (its directory routes by name)."""
        self.worker.write(frames.NameAdded(name, ref.agent_id))

    def name_unregistered(self, name: str, ref: AgentRef) -> None:
        """Tell the main process the name is gone."""
        self.worker.write(frames.NameRemoved(name, ref.agent_id))

    def agent_removed(self, agent_id: str) -> None:
        """Tell the main process not to bring this agent back after a worker restart."""
        self.worker.write(frames.Removed(agent_id))

    def group_joined(self, group: str, ref: AgentRef) -> None:
        """Tell the main process (it keeps every worker's members and joins the mesh group)."""
        self.worker.write(frames.GroupJoined(group, ref.agent_id))

    def group_left(self, group: str, ref: AgentRef) -> None:
        """Tell the main process the membership ended."""
        self.worker.write(frames.GroupLeft(group, ref.agent_id))

    def send_group(self, group: str, msg: Any, mode: str, sender: AgentRef | None) -> None:
        """Forward a group cast: the main process delivers to its members and to the mesh."""
        self.worker.write(frames.GroupCast(group, msg, mode, sender.agent_id if sender else None))


class Worker:
    """The worker's side of the IPC: requests in, replies and events out."""

    def __init__(self, config: dict[str, Any], sock: socket.socket, watchdog_sock: socket.socket) -> None:
        self.config = config
        self.worker_id = str(config["worker_id"])
        self.sock = sock
        self.watchdog_sock = watchdog_sock
        self.channel: Channel | None = None
        #: Requests to the main process in flight: rid -> (reply future, deadline on time.monotonic()).
        self.pending: dict[int, tuple[asyncio.Future[Any], float]] = {}
        self.stopped: asyncio.Future[None] | None = None
        self.next_rid = 1
        self.scope = TaskScope()
        store_path = config.get("store_path") or ":memory:"
        self.runtime = Runtime(build_registry(config), node_id=config.get("node_id", ""),
                               store=CheckpointStore(store_path), codec_name=config.get("codec", "msgpack"),
                               mailbox_capacity=int(config.get("mailbox_capacity", 1000)),
                               router=WorkerRouter(self),
                               root_max_restarts=int(config.get("root_max_restarts", 1000)),
                               root_max_seconds=float(config.get("root_max_seconds", 1.0)))
        #: The run agents this worker hosts (durable runs: frames delivered by the executor).
        self.runs = RunHost(lambda agent_type: self.runtime.registry.get(agent_type)(), self.request)
        self.last_tick = time.monotonic()
        self.ticks = 0
        self.stopping = threading.Event()
        #: The root supervisor gave up (restart intensity): the worker exits so the main process restarts it.
        self.root_gave_up = False

    def write(self, frame: frames.Frame) -> None:
        """Send one frame to the main process (dropped once the channel is closed)."""
        channel = self.channel
        if channel is not None:
            channel.write(frame)

    async def request(self, frame: frames.Call | frames.RunOp, timeout: float) -> Any:
        """Send a request to the main process (under a fresh ``rid``) and wait for its ok/err (the deadline is
        swept by ``_tick``)."""
        rid = self.next_rid
        self.next_rid += 1
        frame = frames.with_rid(frame, rid)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[rid] = (future, time.monotonic() + timeout)
        try:
            self.write(frame)
            return await future
        finally:
            self.pending.pop(rid, None)

    def _expire_requests(self, now: float) -> None:
        """Fail requests to the main process past their deadline (one sweep per tick, no timer per request)."""
        for future, deadline in list(self.pending.values()):
            if deadline <= now and not future.done():
                future.set_exception(Unavailable("the agentd main process did not answer"))

    def _stop_serving(self) -> None:
        if self.stopped is not None and not self.stopped.done():
            self.stopped.set_result(None)

    async def serve(self) -> None:
        """Run until the main process says shutdown or goes away."""
        loop = asyncio.get_running_loop()
        self.stopped = loop.create_future()
        await self.runtime.start()
        # Frames are dispatched in the socket's readiness callback (agentd.ipc.Channel), not by a reader task.
        self.channel = Channel(self.sock, self._dispatch, self._stop_serving)
        heartbeat = float(self.config.get("heartbeat_s", 0.1))
        self._tick(loop, heartbeat)
        watchdog = threading.Thread(target=self._watchdog, name="agentd-watchdog", daemon=True)
        watchdog.start()
        self.write(frames.Hello(self.worker_id, os.getpid()))
        serving = asyncio.current_task()
        assert serving is not None and self.runtime.root is not None
        self.scope.start(self._watch_root(self.runtime.root, serving))
        try:
            await self.stopped
        except asyncio.CancelledError:
            if not self.root_gave_up:
                raise
        finally:
            self.stopping.set()
            await self.runtime.stop()
            await self.scope.aclose()
            self.channel.close()

    async def _watch_root(self, root: AgentProcess, serving: asyncio.Task[None]) -> None:
        """When the root supervisor exits on its own (it gave up), end the worker: like an OTP node whose
        top supervisor dies, it is restarted from outside (the main process re-sends its spawns)."""
        await root.wait()
        if not root.parent_stopping:
            log.critical("worker %s: root supervisor exited (%s); exiting so the main process restarts us",
                         self.worker_id, root.exit_reason)
            self.root_gave_up = True
            serving.cancel()

    def _tick(self, loop: asyncio.AbstractEventLoop, period: float) -> None:
        """Loop liveness: refresh the tick and send statistics (the main process's heartbeat)."""
        self.last_tick = now = time.monotonic()
        self.ticks += 1
        if self.pending:
            self._expire_requests(now)
        self.write(frames.Stats(self.statistics()))
        loop.call_later(period, self._tick, loop, period)

    def _watchdog(self) -> None:
        """Thread: when the loop has not ticked for ``block_warn_s``, name the agent that holds it."""
        warn = float(self.config.get("block_warn_s", 0.5))
        reported_tick = -1
        while not self.stopping.wait(warn / 4):
            blocked_for = time.monotonic() - self.last_tick
            if blocked_for > warn and reported_tick != self.ticks:
                reported_tick = self.ticks
                agent = self.runtime.current_agent or ""
                log.warning("worker %s: loop blocked for %.2f s by agent %s", self.worker_id, blocked_for, agent)
                try:
                    send_blocking(self.watchdog_sock, frames.Blocked(agent, blocked_for))
                except OSError:
                    return

    def statistics(self) -> dict[str, Any]:
        """Counts for the main process's metrics."""
        rt = self.runtime
        depth = sum(len(p.mailbox) for p in rt.processes()) if len(rt) < 20000 else -1
        return {"agents": rt.count_by_status(), "restarts": rt.restart_reasons, "mailbox_depth": depth,
                "latency_counts": rt.latency_counts, "latency_sum": rt.latency_sum, "n": len(rt),
                "runs": len(self.runs)}

    def _dispatch(self, frame: frames.Frame) -> None:
        if self.stopped is None or self.stopped.done():
            return  # shutting down: later frames are not served
        match frame:
            case frames.Call() if self._call_fast(frame):
                pass
            case frames.Cast(rid=rid, to=to, msg=msg, sender=sender):
                try:
                    self.runtime.send(_ref(to), msg)
                    if rid:
                        self.write(frames.Ok(rid, None))
                except AgentError as exc:
                    if rid:
                        self.write(frames.Err(rid, exc.code.name, exc.message))
                    elif sender:
                        self.write(frames.CastFailed(sender, to, exc.code.name, exc.message))
            case frames.Ok(rid=rid, value=value):
                entry = self.pending.get(rid)
                if entry is not None and not entry[0].done():
                    entry[0].set_result(value)
            case frames.Err(rid=rid, code=code, message=message):
                entry = self.pending.get(rid)
                if entry is not None and not entry[0].done():
                    entry[0].set_exception(error_from_code(code, message))
            case frames.Shutdown():
                self._stop_serving()
            case frames.CastFailed(sender=sender, to=to, code=code, message=message):
                self.runtime.delivery_failed(sender, to, error_from_code(code, message))
            case frames.Call() | frames.Spawn() | frames.Stop() | frames.Info() | frames.ListAgents() | frames.Tree() \
                    | frames.RunFrame():
                self.scope.start(self._answer(frame))
            case frames.RunSignal(run_id=run_id, delivery_id=delivery_id, kind=kind):
                self.runs.signal(run_id, delivery_id, kind)
            case _:
                log.error("worker %s: the main process sent %s, which only workers send: ignored",
                          self.worker_id, frames.op_of(frame))

    def _call_fast(self, frame: frames.Call) -> bool:
        """A call to a local agent without a task or a future: the agent answers into a RemoteReply.

        Saves a task and a timer per call (the caller's side keeps the deadline), and the
        reply leaves in the step the agent finishes (a future's done callback wrote it one
        loop turn later); measured by ``python -m bench agents`` (cross_process_calls_per_s).
        """
        proc = self.runtime.local_process(_ref(frame.to))
        if proc is None:
            return False
        try:
            proc.mailbox.put_nowait((CALL, frame.msg, RemoteReply(self, frame.rid)))
        except AgentError as exc:
            self.write(frames.Err(frame.rid, exc.code.name, exc.message))
        return True

    async def _answer(self, frame: frames.Call | frames.Spawn | frames.Stop | frames.Info | frames.ListAgents
                      | frames.Tree | frames.RunFrame) -> None:
        """Run one request that may wait (a call, a spawn) and write its ok/err."""
        rid = frame.rid
        try:
            result = await self._handle(frame)
        except AgentError as exc:
            self.write(frames.Err(rid, exc.code.name, exc.message))
        except Exception:  # a bug must not kill the worker: report it to the caller
            log.exception("worker %s: request %s failed", self.worker_id, frames.op_of(frame))
            self.write(frames.Err(rid, "INTERNAL", f"internal error in worker {self.worker_id} handling "
                                                   f"{frames.op_of(frame)}; the worker logged the cause"))
        else:
            self.write(frames.Ok(rid, result))

    async def _handle(self, frame: frames.Call | frames.Spawn | frames.Stop | frames.Info | frames.ListAgents
                      | frames.Tree | frames.RunFrame) -> Any:
        rt = self.runtime
        match frame:
            case frames.Call(to=to, msg=msg, timeout=timeout):
                return await rt.call(_ref(to), msg, timeout=float(timeout))
            case frames.Spawn(spec=raw, supervisor=supervisor):
                try:
                    spec = ChildSpec.model_validate(raw)
                except ValueError as exc:
                    raise InvalidArgument(f"invalid child spec: {exc}") from None
                rt.registry.get(spec.start.type)
                ref = await rt.start_child(spec, supervisor)
                return ref.agent_id
            case frames.Stop(agent=agent):
                await rt.stop_agent(_ref(agent))
                return None
            case frames.Info(agent=agent):
                return _info_dict(rt.info(_ref(agent)))
            case frames.ListAgents():
                return [_info_dict(info) for info in rt.list_agents()]
            case frames.Tree(root=root):
                return rt.tree(root or None)
            case frames.RunFrame(delivery=delivery):
                return await self.runs.deliver(delivery)


class RemoteReply:
    """Where an agent's answer to a call from the main process goes: written as ok/err at once.

    It has the part of ``asyncio.Future`` an agent's loop uses for ``reply_to`` (``done``,
    ``cancelled``, ``set_result``, ``set_exception``). A reply that is not plain data comes
    back to the caller as INVALID_ARGUMENT instead of never arriving.
    """

    __slots__ = ("_worker", "_rid", "_done")

    def __init__(self, worker: Worker, rid: int) -> None:
        self._worker = worker
        self._rid = rid
        self._done = False

    def done(self) -> bool:
        """True once answered."""
        return self._done

    def cancelled(self) -> bool:
        """Never: the caller's deadline is kept in the main process."""
        return False

    def set_result(self, value: Any) -> None:
        """Send the reply."""
        if self._done:
            return
        self._done = True
        try:
            self._worker.write(frames.Ok(self._rid, value))
        except (TypeError, ValueError, OverflowError) as exc:
            self._worker.write(frames.Err(self._rid, "INVALID_ARGUMENT", f"the reply cannot be encoded: {exc}"))

    def set_exception(self, error: BaseException) -> None:
        """Send an error reply (typed errors keep their code)."""
        if self._done:
            return
        self._done = True
        if isinstance(error, AgentError):
            self._worker.write(frames.Err(self._rid, error.code.name, error.message))
        else:
            self._worker.write(frames.Err(self._rid, "INTERNAL", repr(error)))


def _info_dict(info: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(info)


def main(argv: list[str] | None = None) -> None:
    """Worker entry point (started by the agentd main process)."""
    parser = argparse.ArgumentParser(prog="python -m agentd.worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--watchdog-fd", type=int, required=True)
    parser.add_argument("--config", required=True, help="JSON worker config")
    args = parser.parse_args(argv)
    config = json.loads(args.config)
    logs.setup("agentd", node=config.get("node_id", ""), level=config.get("log_level", "WARNING"),
               fields={"worker": config["worker_id"]})
    # Workers hold many long-lived objects (about 15 per agent): with the default gen0
    # threshold of 700, full collections made spawning 100,000 agents ~2x slower
    # (python -m bench agents, spawn_per_s). Raised like this, spawns stay >= 20k/s.
    gc.set_threshold(*config.get("gc_threshold", GC_THRESHOLD))
    sock = socket.socket(fileno=args.fd)
    watchdog_sock = socket.socket(fileno=args.watchdog_fd)
    watchdog_sock.setblocking(True)
    worker = Worker(config, sock, watchdog_sock)
    import uvloop

    uvloop.run(worker.serve())
    if worker.root_gave_up:
        raise SystemExit(ROOT_GAVE_UP_EXIT)


if __name__ == "__main__":
    main()
