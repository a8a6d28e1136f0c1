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

from agentd.behaviour import AgentRef
from agentd.errors import AgentError, InvalidArgument, Unavailable, error_from_code
from agentd.ipc import FrameReader, pack, send_blocking
from agentd.process import CALL, AgentProcess, TaskScope
from agentd.runtime import AgentRegistry, Runtime
from agentd.store import CheckpointStore
from agentd.supervision import ChildSpec

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
    return registry


def _ref(to: Any) -> AgentRef | str:
    return str(to)


class WorkerRouter:
    """Sends what this worker does not host to the main process, which routes it on."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def cast(self, to: AgentRef | str, msg: Any, sender: AgentRef | None) -> None:
        """Forward a cast; a failure comes back as DeliveryFailed to ``sender``."""
        target = to.agent_id if isinstance(to, AgentRef) else to
        self.worker.write(["cast", 0, target, msg, sender.agent_id if sender else None])

    async def call(self, to: AgentRef | str, msg: Any, timeout: float) -> Any:
        """Forward a call and wait for the reply."""
        target = to.agent_id if isinstance(to, AgentRef) else to
        return await self.worker.request(["call", 0, target, msg, timeout], timeout + 1.0)

    def name_registered(self, name: str, ref: AgentRef) -> None:
        """Tell the main process (its directory routes by name)."""
        self.worker.write(["name+", name, ref.agent_id])

    def name_unregistered(self, name: str, ref: AgentRef) -> None:
        """Tell the main process the name is gone."""
        self.worker.write(["name-", name, ref.agent_id])

    def agent_removed(self, agent_id: str) -> None:
        """Tell the main process not to bring this agent back after a worker restart."""
        self.worker.write(["removed", agent_id])

    def group_joined(self, group: str, ref: AgentRef) -> None:
        """Tell the main process (it keeps every worker's members and joins the mesh group)."""
        self.worker.write(["group+", group, ref.agent_id])

    def group_left(self, group: str, ref: AgentRef) -> None:
        """Tell the main process the membership ended."""
        self.worker.write(["group-", group, ref.agent_id])

    def send_group(self, group: str, msg: Any, mode: str, sender: AgentRef | None) -> None:
        """Forward a group cast: the main process delivers to its members and to the mesh."""
        self.worker.write(["gcast", group, msg, mode, sender.agent_id if sender else None])


class Worker:
    """The worker's side of the IPC: requests in, replies and events out."""

    def __init__(self, config: dict[str, Any], sock: socket.socket, watchdog_sock: socket.socket) -> None:
        self.config = config
        self.worker_id = str(config["worker_id"])
        self.sock = sock
        self.watchdog_sock = watchdog_sock
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.next_rid = 1
        self.scope = TaskScope()
        store_path = config.get("store_path") or ":memory:"
        self.runtime = Runtime(build_registry(config), node_id=config.get("node_id", ""),
                               store=CheckpointStore(store_path), codec_name=config.get("codec", "msgpack"),
                               mailbox_capacity=int(config.get("mailbox_capacity", 1000)),
                               router=WorkerRouter(self),
                               root_max_restarts=int(config.get("root_max_restarts", 1000)),
                               root_max_seconds=float(config.get("root_max_seconds", 1.0)))
        self.last_tick = time.monotonic()
        self.ticks = 0
        self.stopping = threading.Event()
        #: The root supervisor gave up (restart intensity): the worker exits so the main process restarts it.
        self.root_gave_up = False

    def write(self, frame: list[Any]) -> None:
        """Queue one frame to the main process."""
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(pack(frame))

    async def request(self, frame: list[Any], timeout: float) -> Any:
        """Send a request to the main process and wait for its ok/err."""
        rid = self.next_rid
        self.next_rid += 1
        frame[1] = rid
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[rid] = future
        self.write(frame)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise Unavailable("the agentd main process did not answer") from None
        finally:
            self.pending.pop(rid, None)

    async def serve(self) -> None:
        """Run until the main process says shutdown or goes away."""
        reader, self.writer = await asyncio.open_unix_connection(sock=self.sock)
        await self.runtime.start()
        loop = asyncio.get_running_loop()
        heartbeat = float(self.config.get("heartbeat_s", 0.1))
        self._tick(loop, heartbeat)
        watchdog = threading.Thread(target=self._watchdog, name="agentd-watchdog", daemon=True)
        watchdog.start()
        self.write(["hello", self.worker_id, os.getpid()])
        frames = FrameReader(reader)
        serving = asyncio.current_task()
        assert serving is not None and self.runtime.root is not None
        self.scope.start(self._watch_root(self.runtime.root, serving))
        try:
            while True:
                batch = await frames.next_batch()
                if batch is None or any(frame[0] == "shutdown" for frame in batch):
                    break
                for frame in batch:
                    self._dispatch(frame)
        except asyncio.CancelledError:
            if not self.root_gave_up:
                raise
        finally:
            self.stopping.set()
            await self.runtime.stop()
            await self.scope.aclose()
            self.writer.close()

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
        self.last_tick = time.monotonic()
        self.ticks += 1
        self.write(["stats", self.statistics()])
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
                    send_blocking(self.watchdog_sock, ["blocked", agent, blocked_for])
                except OSError:
                    return

    def statistics(self) -> dict[str, Any]:
        """Counts for the main process's metrics."""
        rt = self.runtime
        depth = sum(len(p.mailbox) for p in rt.processes()) if len(rt) < 20000 else -1
        return {"agents": rt.count_by_status(), "restarts": rt.restart_reasons, "mailbox_depth": depth,
                "latency_counts": rt.latency_counts, "latency_sum": rt.latency_sum, "n": len(rt)}

    def _dispatch(self, frame: list[Any]) -> None:
        op = frame[0]
        if op == "cast":
            _, rid, to, msg, sender = frame
            try:
                self.runtime.send(_ref(to), msg)
                if rid:
                    self.write(["ok", rid, None])
            except AgentError as exc:
                if rid:
                    self.write(["err", rid, exc.code, exc.message])
                elif sender:
                    self.write(["cast-failed", sender, to, exc.code, exc.message])
        elif op in ("ok", "err"):
            future = self.pending.get(frame[1])
            if future is not None and not future.done():
                if op == "ok":
                    future.set_result(frame[2])
                else:
                    future.set_exception(error_from_code(frame[2], frame[3]))
        elif op == "call" and self._call_fast(frame):
            return
        elif op == "cast-failed":
            _, sender, to, code, message = frame
            self.runtime.delivery_failed(sender, to, error_from_code(code, message))
        else:
            self.scope.start(self._answer(frame))

    def _call_fast(self, frame: list[Any]) -> bool:
        """A call to a local agent without a task: the reply future's callback writes the answer.

        Saves a task and a timer per call (the caller's side keeps the deadline); measured
        by ``python -m bench agents`` (cross-process call rate).
        """
        _, rid, to, msg, _timeout = frame
        proc = self.runtime.local_process(_ref(to))
        if proc is None:
            return False
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            proc.mailbox.put_nowait((CALL, msg, future))
        except AgentError as exc:
            self.write(["err", rid, exc.code, exc.message])
            return True

        def answer(done: asyncio.Future[Any]) -> None:
            if done.cancelled():
                return
            error = done.exception()
            if error is None:
                self.write(["ok", rid, done.result()])
            elif isinstance(error, AgentError):
                self.write(["err", rid, error.code, error.message])
            else:
                self.write(["err", rid, "INTERNAL", repr(error)])

        future.add_done_callback(answer)
        return True

    async def _answer(self, frame: list[Any]) -> None:
        """Run one request that may wait (a call, a spawn) and write its ok/err."""
        op, rid = frame[0], frame[1]
        try:
            result = await self._handle(op, frame)
        except AgentError as exc:
            self.write(["err", rid, exc.code, exc.message])
        except Exception as exc:  # a bug must not kill the worker: report it to the caller
            log.exception("worker %s: request %s failed", self.worker_id, op)
            self.write(["err", rid, "INTERNAL", f"{type(exc).__name__}: {exc}"])
        else:
            self.write(["ok", rid, result])

    async def _handle(self, op: str, frame: list[Any]) -> Any:
        rt = self.runtime
        if op == "call":
            return await rt.call(_ref(frame[2]), frame[3], timeout=float(frame[4]))
        if op == "spawn":
            try:
                spec = ChildSpec.model_validate(frame[2])
            except ValueError as exc:
                raise InvalidArgument(f"invalid child spec: {exc}") from None
            rt.registry.get(spec.start.type)
            ref = await rt.start_child(spec, frame[3])
            return ref.agent_id
        if op == "stop":
            await rt.stop_agent(_ref(frame[2]))
            return None
        if op == "info":
            return _info_dict(rt.info(_ref(frame[2])))
        if op == "list":
            return [_info_dict(info) for info in rt.list_agents()]
        if op == "tree":
            return rt.tree(frame[2] if len(frame) > 2 and frame[2] else None)
        raise InvalidArgument(f"unknown request {op!r}")


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
    logging.basicConfig(level=config.get("log_level", "WARNING"),
                        format=f"%(asctime)s worker {config['worker_id']} %(name)s %(levelname)s %(message)s")
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
