"""The worker's side of durable runs: the :class:`~agentd.behaviour.Run` context and the host of run agents.

The executor (agentd's main process, holding the run's lease) delivers one frame
at a time to a worker as ``run-frame`` with everything a replay needs: the last
checkpoint's state and the effects already recorded for this frame. The worker
calls the agent type's ``handle_frame(frame, run)``; each new effect goes back to
the executor as a ``run-op`` request, which appends it (fenced by the lease) and
answers with its seq. ``run-signal`` says "cancel" (the context raises
:class:`~agentd.behaviour.RunCanceled` from then on) or "interrupt" (the handler's
task is cancelled).

IPC frames (:mod:`agentd.frames`): main → worker ``RunFrame`` (answered by ``Ok`` with the
outcome) and ``RunSignal``; worker → main ``RunOp`` (answered by ``Ok`` with ``{"value": v}`` or
``{"error": reason, "message": m}``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agentd.behaviour import Agent, Frame, RunCanceled
from agentd.frames import RunOp
from agentd.runs.model import canonical_json

log = logging.getLogger("agentd.runs")

#: (op, args[, timeout]) -> the executor's answer; the worker's request to the main process.
Request = Callable[..., Awaitable[dict[str, Any]]]
#: How long one effect may take before the worker gives up waiting for the executor's answer.
OP_TIMEOUT = 60.0
#: A model call's answer may take long (retries, fallbacks, a slow provider): its own bound.
MODEL_OP_TIMEOUT = 900.0


class RunOpRefused(Exception):
    """The executor refused an effect: ``reason`` is an ErrorReason name (EXECUTOR_FENCED, RUN_TERMINAL, ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class RunContext:
    """The ``run`` an agent's ``handle_frame`` gets (implements :class:`agentd.behaviour.Run`)."""

    def __init__(self, delivery: dict[str, Any], request: Request) -> None:
        self._run_id = str(delivery["run_id"])
        self._tenant = str(delivery.get("tenant", "default"))
        self._agent = str(delivery.get("agent_type", ""))
        self._state = delivery.get("state")
        self._canceled = bool(delivery.get("canceled", False))
        self._request = request
        replay = delivery.get("replay") or {}
        #: Effects recorded for this frame by an earlier delivery: consumed as the handler repeats them.
        self._emits: list[tuple[str, str, int]] = [(str(t), str(p), int(s)) for t, p, s in replay.get("emits", [])]
        self._checkpoints: list[tuple[str, int]] = [(str(p), int(s)) for p, s in replay.get("checkpoints", [])]
        self._steps: dict[str, Any] = dict(replay.get("steps", {}))
        self.replayed = 0

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self._run_id

    @property
    def tenant(self) -> str:
        """The tenant owning the run."""
        return self._tenant

    @property
    def agent(self) -> str:
        """The agent type executing the run."""
        return self._agent

    @property
    def state(self) -> Any:
        """The state of the run's last checkpoint."""
        return self._state

    @property
    def canceled(self) -> bool:
        """True once cancellation was requested."""
        return self._canceled

    def cancel(self) -> None:
        """The executor saw run.cancel_requested: refuse new work from now on."""
        self._canceled = True

    def _check(self) -> None:
        if self._canceled:
            raise RunCanceled(f"run {self._run_id} is being canceled")

    async def _op(self, op: str, args: dict[str, Any], timeout: float = OP_TIMEOUT) -> Any:
        answer = await self._request(op, args, timeout)
        if "error" in answer:
            if answer["error"] == "RUN_CANCELED":
                self._canceled = True
                raise RunCanceled(answer.get("message", ""))
            raise RunOpRefused(str(answer["error"]), str(answer.get("message", "")))
        return answer.get("value")

    async def emit(self, type_: str, payload: Any = None) -> int:
        """Append an event; a replay of an identical event recorded for this frame returns its seq."""
        self._check()
        text = canonical_json(payload)
        for index, (recorded_type, recorded_payload, seq) in enumerate(self._emits):
            if recorded_type == type_ and recorded_payload == text:
                del self._emits[index]
                self.replayed += 1
                return seq
        return int(await self._op("emit", {"type": type_, "payload": text}))

    async def checkpoint(self, state: Any) -> int:
        """Record the agent's state; the seq of its run.checkpoint event."""
        self._check()
        text = canonical_json(state)
        for index, (recorded, seq) in enumerate(self._checkpoints):
            if recorded == text:
                del self._checkpoints[index]
                self._state = state
                self.replayed += 1
                return seq
        seq = int(await self._op("checkpoint", {"state": text}))
        self._state = state
        return seq

    async def step(self, key: str, fn: Callable[[], Any | Awaitable[Any]]) -> Any:
        """The recorded result of ``key``, or ``fn()`` recorded now."""
        if key in self._steps:
            self.replayed += 1
            return self._steps[key]
        self._check()
        result = fn()
        if inspect.isawaitable(result):
            result = await result
        text = canonical_json(result)
        late = self._canceled  # cancellation arrived while fn ran: recorded, but not authoritative
        await self._op("step", {"key": key, "result": text, "late": late})
        if late:
            raise RunCanceled(f"run {self._run_id} was canceled while step {key!r} ran; its result is "
                              "recorded as non-authoritative")
        self._steps[key] = result
        return result

    async def model(self, request: dict[str, Any], key: str) -> dict[str, Any]:
        """One model call as a durable step: its deltas and receipt go into the log; a replay returns the answer.

        ``request`` is agentd's JSON request (``model``, ``messages``, ``tools``, ``temperature``,
        ``max_tokens``, ...; see :func:`agentd.models.runcall.request_from_json`). The call runs in agentd's
        main process (where the providers, breakers and budgets live) and the answer is recorded as the step
        ``key`` in the same fenced append as the receipt, so a finished call is never paid for twice.
        A failed call raises :class:`RunOpRefused` with the model error's reason (BUDGET_EXHAUSTED, ...).
        """
        if key in self._steps:
            self.replayed += 1
            return dict(self._steps[key])
        self._check()
        value = await self._op("model", {"key": key, "request": canonical_json(request)}, MODEL_OP_TIMEOUT)
        self._steps[key] = value
        return dict(value)

    async def call(self, to: str, message: Any, timeout: float = 5.0) -> Any:
        """Call an agent by name (on this agentd or anywhere in the mesh) and return its reply.

        Not a step by itself: wrap it in :meth:`step` when its reply must not be asked for again after a
        crash. A failed call raises :class:`RunOpRefused` (reason CALL_FAILED, the callee's code in the text).
        """
        self._check()
        return await self._op("agent_call", {"to": to, "message": message, "timeout": timeout}, timeout + OP_TIMEOUT)

    async def wait_approval(self, call_id: str, deadline: float, after: int = 0) -> tuple[bool, str]:
        """Wait for a human's decision on tool call ``call_id`` (ApproveToolCall / DenyToolCall).

        The decision is read from the log (a decision frame, or the expiry the executor appends when
        ``deadline`` — wall-clock seconds — passes first), so a wait that a crash interrupted finds the same
        answer after a restart. Returns (approved, note); the note is "expired" for an expiry.
        """
        self._check()
        timeout = max(0.0, deadline - time.time()) + OP_TIMEOUT
        value = await self._op("wait_approval", {"tool_call_id": call_id, "deadline": deadline, "after": after},
                               timeout)
        return bool(value["approved"]), str(value.get("note", ""))

    async def history(self, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Events of this run from ``after + 1`` on."""
        value = await self._op("history", {"after": int(after), "limit": int(limit)})
        return list(value)

    async def complete(self, output: Any = None) -> None:
        """End the run as completed."""
        await self._op("complete", {"output": canonical_json(output)})

    async def fail(self, error_class: str, message: str = "") -> None:
        """End the run as failed."""
        await self._op("fail", {"error_class": str(error_class), "message": str(message)})


class RunHost:
    """The run agents of one worker: an agent instance per run (a cache), the handler task per delivery."""

    def __init__(self, make_agent: Callable[[str], Agent], request: Callable[[RunOp, float], Awaitable[Any]]):
        self._make_agent = make_agent
        self._request = request
        self._agents: dict[str, Agent] = {}
        #: run_id -> (delivery id, context, handler task) of the frame being handled.
        self._current: dict[str, tuple[int, RunContext, asyncio.Task[None]]] = {}

    def __len__(self) -> int:
        return len(self._current)

    async def deliver(self, delivery: dict[str, Any]) -> dict[str, Any]:
        """Handle one frame; the outcome: handled, canceled, interrupted, or error (with class and message)."""
        run_id = str(delivery["run_id"])
        delivery_id = int(delivery["delivery"])
        agent = self._agents.get(run_id)
        if agent is None:
            agent = self._agents[run_id] = self._make_agent(str(delivery["agent_type"]))

        async def request(op: str, args: dict[str, Any], timeout: float = OP_TIMEOUT) -> dict[str, Any]:
            answer: dict[str, Any] = await self._request(RunOp(0, run_id, delivery_id, op, args), timeout)
            return answer

        context = RunContext(delivery, request)
        raw = delivery["frame"]
        frame = Frame(str(raw["frame_id"]), str(raw["type"]), raw.get("payload"), int(raw["seq"]))
        task = asyncio.get_running_loop().create_task(agent.handle_frame(frame, context))
        self._current[run_id] = (delivery_id, context, task)
        try:
            await asyncio.shield(task)
            return {"outcome": "handled", "replayed": context.replayed}
        except RunCanceled:
            return {"outcome": "canceled"}
        except asyncio.CancelledError:
            if task.cancelled() and not _current_task_cancelling():
                return {"outcome": "interrupted"}
            task.cancel()
            raise
        except RunOpRefused as refused:
            return {"outcome": "refused", "reason": refused.reason, "message": refused.message}
        except Exception as error:  # the handler failed: the run fails with the error class
            log.warning("run %s: handle_frame raised %s: %s", run_id, type(error).__name__, error)
            return {"outcome": "error", "error_class": "handler_error", "exception": type(error).__name__,
                    "message": str(error)[:2000]}
        finally:
            if self._current.get(run_id, (None,))[0] == delivery_id:
                del self._current[run_id]

    def signal(self, run_id: str, delivery_id: int, kind: str) -> None:
        """``cancel``: the context refuses new work; ``interrupt``: cancel the handler's task; ``forget``: drop
        the run's agent instance (the run ended)."""
        if kind == "forget":
            self._agents.pop(run_id, None)
        current = self._current.get(run_id)
        if current is None or current[0] != delivery_id and delivery_id:
            return
        if kind == "cancel":
            current[1].cancel()
        elif kind == "interrupt":
            current[2].cancel()


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
