"""The executor of one run on this node: it holds the run's lease, reads the log, and drives the agent.

Life of an executor (one asyncio task, owned by the :class:`~agentd.runs.manager.RunManager`):

1. it holds the run's etcd lease key (:class:`~agentd.runs.lease.RunLease`) and claims
   the run in the store with the key's fencing token (``run.executor_acquired``; a
   takeover appends ``run.executor_lost`` first);
2. it follows the log (:class:`~agentd.runs.scan.LogScan`, woken by new commits) and
   delivers pending frames to the run's agent in a worker, in seq order, one at a time:
   ``frame.started``, the handler's effects (each a fenced append, answered by
   :meth:`Executor.op`), ``frame.handled``;
3. input policy: under "interrupt" a newer frame cancels the handler in progress
   (``frame.handled`` with outcome ``interrupted``) and a frame already superseded
   before it started is skipped (``superseded``); "enqueue" and "reject" wait;
4. ``run.cancel_requested``: the handler's context refuses new work at once; the
   executor waits ``cancel_grace_s`` for it to return, then interrupts it, and appends
   ``run.canceled`` — the deterministic end whatever the handler did;
5. a worker that dies mid-frame is replaced by the pool; the frame is delivered again
   with its recorded effects (a replay), at most ``max_frame_attempts`` times, then the
   run fails with error class ``worker_crashed``;
6. it stops when the run ends, when its lease is lost (it stops appending; a newer
   executor's token fences it out anyway), or on shutdown (``run.executor_released``,
   so another node resumes the run without counting a recovery).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentd.errors import AgentError
from agentd.models.runcall import run_model_call
from agentd.models.service import status_for as model_status
from agentd.models.types import ModelError
from agentd.runs.lease import RunLease
from agentd.runs.model import (
    AgentCallFailed,
    ExecutorFenced,
    ModelsNotConfigured,
    NewEvent,
    RunCanceling,
    RunError,
    RunsUnavailable,
    RunTerminal,
    StaleCursor,
    canonical_json,
)
from agentd.runs.scan import APPROVAL_EXPIRED, LogScan, PendingFrame
from agentd.runs.upcasters import upcast
from agentd.runs.validation import check_type, json_text, raise_if

if TYPE_CHECKING:
    from agentd.runs.manager import RunManager

log = logging.getLogger("agentd.runs.executor")


class Deposed(Exception):
    """This executor lost the run (its lease, or its fencing token): stop at once, append nothing more."""


@dataclass
class Delivery:
    """The frame being handled: which delivery (ids grow per executor), where, and whether it was told to stop."""

    delivery_id: int
    worker_id: str
    frame: PendingFrame
    cancel_signalled: bool = False
    interrupted: bool = False


def event_dict(event: Any, raw: bool = False) -> dict[str, Any]:
    """An event as the agent's ``history()`` sees it (upcast unless ``raw``)."""
    payload = event.payload_value()
    version = event.version
    if not raw and event.payload is not None:
        version, payload = upcast(event.type, version, payload)
    return {"seq": event.seq, "type": event.type, "version": version, "time_ms": event.time_ms,
            "payload": payload}


class Executor:
    """Executes one run while holding its lease (see the module docstring)."""

    def __init__(self, manager: RunManager, run_id: str, tenant: str, agent_type: str, input_policy: str,
                 lease: RunLease) -> None:
        self.manager = manager
        self.store = manager.store
        self.run_id = run_id
        self.tenant = tenant
        self.agent_type = agent_type
        self.input_policy = input_policy
        self.lease = lease
        self.token = lease.token
        self.scan = LogScan()
        self.current: Delivery | None = None
        self._next_delivery = 1
        self._releasing = False
        self.claimed = asyncio.Event()
        self.ended = asyncio.Event()
        self.outcome = ""
        self._worker_id = ""
        self._attempts: dict[int, int] = {}
        self._clock: Callable[[], float] = time.time

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _append(self, events: list[NewEvent], checkpoint: str | None = None) -> int:
        try:
            plan = await self.store.append(self.run_id, self.token, events, self._now_ms(), checkpoint)
        except ExecutorFenced as error:
            raise Deposed(str(error)) from None
        return plan.seq

    # --- the task ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Claim the run, execute it until it ends (or this executor stops), then let the lease go."""
        keepalive = asyncio.get_running_loop().create_task(self.lease.keepalive())
        try:
            try:
                plan = await self.store.claim(self.run_id, self.token, self.manager.node_id, self.lease.lease_id,
                                              self._now_ms(), self.manager.config.max_recoveries)
            except (RunTerminal, ExecutorFenced) as error:
                self.outcome = f"not claimed: {error}"
                return
            finally:
                self.claimed.set()
            if plan.row.terminal:
                self.outcome = plan.row.status
                return
            work = asyncio.get_running_loop().create_task(self._execute())
            lost = asyncio.get_running_loop().create_task(self.lease.wait_lost())
            try:
                done, _ = await asyncio.wait({work, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (work, lost):
                    task.cancel()
                await asyncio.gather(work, lost, return_exceptions=True)
            if lost in done and not work.done():
                self.outcome = "lease lost"
            elif work in done and not work.cancelled() and work.exception() is not None:
                error = work.exception()
                self.outcome = f"stopped: {error}"
                if not isinstance(error, Deposed | RunsUnavailable):
                    log.error("run %s: executor failed", self.run_id, exc_info=error)
            if lost in done:
                log.warning("run %s: the executor's lease was lost; it stops (another node resumes the run)",
                            self.run_id)
                self._interrupt_current()
        except asyncio.CancelledError:
            if self._releasing:
                await self._release()
            raise
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive
            if not self._releasing:
                await self.lease.release()
            self.ended.set()
            if self._worker_id:
                self.manager.pool.run_signal(self._worker_id, self.run_id, 0, "forget")

    async def stop(self, release: bool = True) -> None:
        """Shutdown: interrupt the frame in progress and hand the run back (``run.executor_released``)."""
        self._releasing = release

    async def _release(self) -> None:
        self._interrupt_current()
        with contextlib.suppress(RunError, Deposed):
            await self.store.release(self.run_id, self.token, self._now_ms())
        await self.lease.release()

    def _interrupt_current(self) -> None:
        current = self.current
        if current is not None:
            self.manager.pool.run_signal(current.worker_id, self.run_id, current.delivery_id, "interrupt")

    # --- following the log -------------------------------------------------------------------------

    async def _read_new(self) -> None:
        while True:
            try:
                run, events = await self.store.read(self.run_id, self.scan.cursor, 512)
            except StaleCursor as stale:
                # Retention never removes what a resume needs; skip what it removed.
                self.scan.cursor = stale.floor - 1
                continue
            for event in events:
                self.scan.feed(event)
            if run.terminal and not self.scan.terminal:
                self.scan.terminal = "run." + run.status
            if len(events) < 512:
                return

    async def _execute(self) -> None:
        with self.manager.wakeups.subscribe(self.run_id) as sub:
            while True:
                sub.clear()
                await self._read_new()
                if self.scan.terminal:
                    self.outcome = self.scan.terminal
                    return
                if self.scan.canceled:
                    await self._finish_cancel(abandoned=False)
                    continue
                frame = self.scan.next_frame()
                if frame is None:
                    await sub.wait()
                    continue
                if frame.seq not in self.scan.started:
                    if self.input_policy == "interrupt" and self.scan.newer_than(frame):
                        await self._append([NewEvent("frame.handled", canonical_json(
                            {"frame_seq": frame.seq, "frame_id": frame.frame_id, "outcome": "superseded"}))])
                        continue
                    try:
                        await self._append([NewEvent("frame.started", canonical_json(
                            {"frame_seq": frame.seq, "frame_id": frame.frame_id}))])
                    except RunCanceling:
                        continue  # the log now says canceled: the next read finishes the run
                    await self._read_new()
                await self._handle(frame, sub)

    async def _handle(self, frame: PendingFrame, sub: Any) -> None:
        outcome = await self._deliver(frame, sub)
        kind = outcome.get("outcome")
        await self._read_new()
        if self.scan.terminal:
            return
        if kind == "handled" or (kind == "interrupted" and not self.scan.canceled):
            await self._append([NewEvent("frame.handled", canonical_json(
                {"frame_seq": frame.seq, "frame_id": frame.frame_id, "outcome": kind}))])
        elif kind in ("canceled", "interrupted", "abandoned"):
            await self._finish_cancel(abandoned=kind == "abandoned")
        elif kind == "error":
            await self._append([NewEvent("run.failed", canonical_json(
                {"error_class": outcome.get("error_class", "handler_error"), "exception": outcome.get("exception"),
                 "message": outcome.get("message", ""), "frame_seq": frame.seq}))])
        elif kind == "refused":
            if outcome.get("reason") == "EXECUTOR_FENCED":
                raise Deposed(str(outcome.get("message")))
            if outcome.get("reason") != "RUN_TERMINAL":
                await self._append([NewEvent("run.failed", canonical_json(
                    {"error_class": "handler_error", "exception": "RunOpRefused",
                     "message": f"{outcome.get('reason')}: {outcome.get('message')}", "frame_seq": frame.seq}))])
        elif kind == "worker_lost":
            attempts = self._attempts.get(frame.seq, 0) + 1
            self._attempts[frame.seq] = attempts
            if attempts >= self.manager.config.max_frame_attempts:
                await self._append([NewEvent("run.failed", canonical_json(
                    {"error_class": "worker_crashed", "frame_seq": frame.seq,
                     "message": f"the worker handling frame {frame.frame_id!r} died {attempts} times"}))])
            else:
                log.warning("run %s: worker lost while handling frame %s; delivering it again (attempt %d)",
                            self.run_id, frame.frame_id, attempts + 1)

    async def _deliver(self, frame: PendingFrame, sub: Any) -> dict[str, Any]:
        """Hand ``frame`` to the run's agent in a worker and wait for the outcome, reacting to cancel/interrupt."""
        if not self._worker_id or self._worker_id not in self.manager.pool.workers:
            self._worker_id = await self.manager.pool.run_worker(self.tenant)  # the tenant's own worker
        checkpoint = await self.store.latest_checkpoint(self.run_id)
        delivery = Delivery(self._next_delivery, self._worker_id, frame)
        self._next_delivery += 1
        body = {"run_id": self.run_id, "tenant": self.tenant,
                "agent_type": self.agent_type, "delivery": delivery.delivery_id,
                "frame": {"seq": frame.seq, "frame_id": frame.frame_id, "type": frame.type, "payload": frame.payload},
                "state": json.loads(checkpoint.state) if checkpoint is not None else None,
                "replay": self.scan.replay_for(frame).as_dict(), "canceled": self.scan.canceled}
        self.current = delivery
        if self.scan.canceled:
            delivery.cancel_signalled = True
        task = asyncio.get_running_loop().create_task(self.manager.pool.run_frame(delivery.worker_id, body))
        grace_deadline: float | None = None
        try:
            while not task.done():
                sub.clear()
                timeout = None if grace_deadline is None else max(0.0, grace_deadline - time.monotonic())
                waiter = asyncio.get_running_loop().create_task(sub.wait())
                done, _ = await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if task.done():
                    break
                await self._read_new()
                if self.scan.canceled and not delivery.cancel_signalled:
                    delivery.cancel_signalled = True
                    self.manager.pool.run_signal(delivery.worker_id, self.run_id, delivery.delivery_id, "cancel")
                if delivery.cancel_signalled and grace_deadline is None:
                    grace_deadline = time.monotonic() + self.manager.config.cancel_grace_s
                interrupt = self.input_policy == "interrupt" and self.scan.newer_than(frame)
                if grace_deadline is not None and time.monotonic() >= grace_deadline:
                    if delivery.interrupted:
                        task.cancel()
                        return {"outcome": "abandoned"}
                    interrupt = True
                    grace_deadline = time.monotonic() + 1.0  # a last second to unwind, then abandon it
                if interrupt and not delivery.interrupted:
                    delivery.interrupted = True
                    self.manager.pool.run_signal(delivery.worker_id, self.run_id, delivery.delivery_id,
                                                 "interrupt")
            try:
                return task.result()
            except AgentError as error:
                if error.code == "UNAVAILABLE":
                    return {"outcome": "worker_lost", "message": error.message}
                return {"outcome": "error", "error_class": "runtime_error", "exception": type(error).__name__,
                        "message": error.message}
        finally:
            if not task.done():
                task.cancel()
            self.current = None

    async def _finish_cancel(self, abandoned: bool) -> None:
        await self._append([NewEvent("run.canceled", canonical_json(
            {"reason": self.scan.cancel_reason or "", "abandoned_work": abandoned}))])

    # --- effects from the agent ----------------------------------------------------------------------

    async def op(self, delivery_id: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """One effect of the handler of delivery ``delivery_id``: append it (fenced) and answer with its seq."""
        current = self.current
        if current is None or current.delivery_id != delivery_id:
            return {"error": "EXECUTOR_FENCED", "message": "this frame's handling is over; its effects are refused"}
        try:
            return {"value": await self._op(current, op, args)}
        except Deposed as error:
            return {"error": "EXECUTOR_FENCED", "message": str(error)}
        except RunCanceling as error:
            return {"error": "RUN_CANCELED", "message": error.message}
        except RunError as error:
            return {"error": error.reason or error.code, "message": error.message}
        except ModelError as error:  # the model op: the call failed after everything was tried
            status = model_status(error)
            return {"error": status.reason or status.code.name, "message": status.message}

    async def _record_step(self, frame: PendingFrame, key: str, result: Any, late: bool) -> int:
        """Append ``step.completed``; a result that cancellation overtook is recorded non-authoritative."""

        def step(authoritative: bool) -> NewEvent:
            return NewEvent("step.completed", canonical_json({
                "key": key, "frame_seq": frame.seq, "authoritative": authoritative, "result": result}))

        if not late:
            try:
                return await self._append([step(True)])
            except RunCanceling:
                pass  # cancellation landed while the step ran: its result is late
        await self._append([step(False)])
        raise RunCanceling("the run is being canceled: the step's result was recorded as non-authoritative")

    async def _model_call(self, frame: PendingFrame, key: str, request_json: str) -> Any:
        """The ``model`` op: the call streams into the log, then its answer is recorded as step ``key``."""
        router = self.manager.models
        if router is None:
            raise ModelsNotConfigured("no model providers are configured on this agentd ([models] in its config)")
        violations: dict[str, str] = {}
        if not key:
            violations["key"] = "a model call needs a step key"
        request = json_text("request", request_json, violations)
        raise_if(violations)
        assert request is not None
        answer = await run_model_call(router, lambda events: self._append(list(events)), self.run_id, self.tenant,
                                      json.loads(request))
        await self._record_step(frame, key, answer, late=self.scan.canceled)
        return answer

    async def _agent_call(self, to: str, message: Any, timeout: float) -> Any:
        """The ``agent_call`` op: call an agent by name (here or through the mesh); its errors become refusals."""
        if not to:
            raise_if({"to": "must name an agent"})
        try:
            return await self.manager.pool.call(to, message, max(0.001, min(timeout, 3600.0)))
        except AgentError as error:
            raise AgentCallFailed(f"call to {to!r} failed: {error.message}", {"code": error.code}) from None

    async def _wait_approval(self, call_id: str, deadline: float, after: int) -> dict[str, Any]:
        """The ``wait_approval`` op: the first word on ``call_id`` in the log (a decision, or the expiry).

        Reads its own copy of the log from ``after`` (the executor's scan belongs to the frame loop). When the
        deadline passes with no decision, the executor appends ``tool.approval_expired`` and reads again: the
        log's order decides, so a decision that landed just before the expiry still counts.
        """
        if not call_id:
            raise_if({"tool_call_id": "must not be empty"})
        scan = LogScan(cursor=after)
        with self.manager.wakeups.subscribe(self.run_id) as sub:
            while True:
                sub.clear()
                while True:
                    try:
                        _, events = await self.store.read(self.run_id, scan.cursor, 512)
                    except StaleCursor as stale:
                        scan.cursor = stale.floor - 1
                        continue
                    for event in events:
                        scan.feed(event)
                    if len(events) < 512:
                        break
                word = scan.approvals.get(call_id)
                if word is not None:
                    return word
                if scan.canceled or self.scan.canceled:
                    raise RunCanceling("the run is being canceled while a tool call waits for approval")
                remaining = deadline - self._clock()
                if remaining <= 0:
                    await self._append([NewEvent(APPROVAL_EXPIRED, canonical_json(
                        {"tool_call_id": call_id, "deadline": deadline}))])
                    continue
                await sub.wait(timeout=remaining)

    async def _op(self, current: Delivery, op: str, args: dict[str, Any]) -> Any:
        frame = current.frame
        canceled = self.scan.canceled or current.cancel_signalled
        if op in ("emit", "checkpoint") and canceled:
            raise RunCanceling("the run is being canceled: no new work")
        if op == "emit":
            violations: dict[str, str] = {}
            check_type("type", str(args.get("type", "")), violations, agent_emitted=True)
            payload = json_text("payload", str(args.get("payload", "null")), violations)
            raise_if(violations)
            assert payload is not None
            return await self._append([NewEvent(str(args["type"]), payload)])
        if op == "checkpoint":
            violations = {}
            state = json_text("state", str(args.get("state", "null")), violations)
            raise_if(violations)
            return await self._append([], checkpoint=state)
        if op == "step":
            violations = {}
            result = json_text("result", str(args.get("result", "null")), violations)
            raise_if(violations)
            assert result is not None
            return await self._record_step(frame, str(args.get("key", "")), json.loads(result),
                                           late=bool(args.get("late")) or canceled)
        if op == "model":
            if canceled:
                raise RunCanceling("the run is being canceled: no new model calls")
            return await self._model_call(frame, str(args.get("key", "")), str(args.get("request", "null")))
        if op == "agent_call":
            if canceled:
                raise RunCanceling("the run is being canceled: no new agent calls")
            return await self._agent_call(str(args.get("to", "")), args.get("message"),
                                          float(args.get("timeout", 5.0)))
        if op == "wait_approval":
            return await self._wait_approval(str(args.get("tool_call_id", "")), float(args.get("deadline", 0)),
                                             max(0, int(args.get("after", 0))))
        if op == "history":
            _, events = await self.store.read(self.run_id, max(0, int(args.get("after", 0))),
                                              min(max(1, int(args.get("limit", 1000))), 10_000))
            return [event_dict(e) for e in events]
        if op == "complete":
            violations = {}
            output = json_text("output", str(args.get("output", "null")), violations)
            raise_if(violations)
            assert output is not None
            return await self._append([
                NewEvent("frame.handled", canonical_json({"frame_seq": frame.seq, "frame_id": frame.frame_id,
                                                          "outcome": "completed"})),
                NewEvent("run.completed", canonical_json({"output": json.loads(output)}))])
        if op == "fail":
            return await self._append([
                NewEvent("frame.handled", canonical_json({"frame_seq": frame.seq, "frame_id": frame.frame_id,
                                                          "outcome": "failed"})),
                NewEvent("run.failed", canonical_json({"error_class": str(args.get("error_class", ""))[:128],
                                                       "message": str(args.get("message", ""))[:4096]}))])
        raise RunTerminal(f"unknown run operation {op!r}")
