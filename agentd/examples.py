"""Example agent types: the demo, the benchmarks and the multi-process tests start these.

They are registered only when the config asks for them (``examples = true``), like
any other allow-listed type.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from agentd.behaviour import Agent, DeliveryFailed, Frame, Run
from agentd.runtime import AgentRegistry


class Echo(Agent):
    """Replies to a call with the message; ignores casts. The smallest useful agent (benchmarks)."""

    async def init(self, args: dict[str, Any]) -> Any:
        return None

    async def handle_call(self, msg: Any, state: Any) -> tuple[Any, Any]:
        return msg, state


class Counter(Agent):
    """Adds each cast to ``n`` and checkpoints it; calls: ``get``, ``pid``, ``restarts``, ``crash``,
    ``{"sleep": s}``, ``{"block": s}`` (blocks the worker loop: watchdog demo), ``hang`` (stuck: handling-timeout demo)."""

    handle_timeout = 5.0

    async def init(self, args: dict[str, Any]) -> Any:
        return {"n": int(args.get("start", 0)), "args": args}

    async def handle_cast(self, msg: Any, state: Any) -> Any:
        if msg == "crash":
            raise RuntimeError("crashed on request")
        if msg == "hang":
            await asyncio.sleep(3600)
        state = {**state, "n": state["n"] + int(msg)}
        await self.ctx.checkpoint(state)
        return state

    async def handle_call(self, msg: Any, state: Any) -> tuple[Any, Any]:
        if msg == "pid":
            return os.getpid(), state
        if msg == "restarts":
            return self.ctx.restarts, state
        if msg == "args":
            return state.get("args", {}), state
        if msg == "crash":
            raise RuntimeError("crashed on request")
        if msg == "hang":
            await asyncio.sleep(3600)
        if isinstance(msg, dict) and "sleep" in msg:
            await asyncio.sleep(float(msg["sleep"]))
            return "slept", state
        if isinstance(msg, dict) and "block" in msg:
            time.sleep(float(msg["block"]))  # noqa: ASYNC251 -- on purpose: the watchdog must name us
            return "unblocked", state
        if isinstance(msg, dict) and "add" in msg:
            state = {**state, "n": state["n"] + int(msg["add"])}
            await self.ctx.checkpoint(state)
        return state["n"], state


class Relay(Agent):
    """Forwards each call to the agent named in the message (``{"to": name, "msg": m}``): cross-process calls."""

    async def init(self, args: dict[str, Any]) -> Any:
        return None

    async def handle_call(self, msg: Any, state: Any) -> tuple[Any, Any]:
        return await self.ctx.call(msg["to"], msg["msg"], timeout=float(msg.get("timeout", 5.0))), state


class Member(Agent):
    """A process-group member: joins ``args["groups"]`` in ``init`` and keeps what it receives.

    Calls: ``seen`` (casts received, in order), ``failed`` (DeliveryFailed infos as
    ``[to, code]``), ``{"join": g}``, ``{"leave": g}``, ``{"send_group": g, "msg": m, "mode": "all"|"one"}``.
    """

    async def init(self, args: dict[str, Any]) -> Any:
        for group in args.get("groups", []):
            self.ctx.join_group(group)
        return {"seen": [], "failed": []}

    async def handle_cast(self, msg: Any, state: Any) -> Any:
        state["seen"].append(msg)
        return state

    async def handle_info(self, msg: Any, state: Any) -> Any:
        if isinstance(msg, DeliveryFailed):
            state["failed"].append([msg.to, msg.code])
        return state

    async def handle_call(self, msg: Any, state: Any) -> tuple[Any, Any]:
        if msg == "seen":
            return list(state["seen"]), state
        if msg == "failed":
            return list(state["failed"]), state
        if isinstance(msg, dict) and "join" in msg:
            self.ctx.join_group(msg["join"])
        elif isinstance(msg, dict) and "leave" in msg:
            self.ctx.leave_group(msg["leave"])
        elif isinstance(msg, dict) and "send_group" in msg:
            self.ctx.send_group(msg["send_group"], msg.get("msg"), msg.get("mode", "all"))
        return "ok", state


class Escalating(Counter):
    """A Counter whose restart policy switches to ``model: large`` from the third restart on."""

    @classmethod
    def restart_policy(cls, spec: Any, attempt: int, last_reason: str) -> dict[str, Any] | None:
        if attempt >= 3:
            return {**spec.start.args, "model": "large", "attempt": attempt}
        return None


class ModelWorker(Agent):
    """Answers ``{"prompt": text}`` calls with a chat model through an agentd's ModelService (seed 000's escalation).

    Start args: ``endpoint`` (the agentd's gRPC HOST:PORT), ``model`` (a model or route),
    ``escalate_to`` and ``escalate_after`` (default 2). A model that hangs past
    ``handle_timeout`` gets the agent killed with reason ``timeout``; from restart
    ``escalate_after`` on, its restart policy swaps ``model`` for ``escalate_to``
    (cheap -> strong). The reply is ``{"content", "model", "route", "attempt"}``.
    """

    handle_timeout = 3.0

    @classmethod
    def restart_policy(cls, spec: Any, attempt: int, last_reason: str) -> dict[str, Any] | None:
        args = spec.start.args
        if args.get("escalate_to") and attempt >= int(args.get("escalate_after", 2)) and \
                args.get("model") != args["escalate_to"]:
            return {**args, "model": args["escalate_to"], "escalated_after": last_reason}
        return None

    async def init(self, args: dict[str, Any]) -> Any:
        import grpc

        from mabeam.v1 import model_pb2_grpc

        self.channel = grpc.aio.insecure_channel(args["endpoint"])
        self.stub = model_pb2_grpc.ModelServiceStub(self.channel)
        return {"model": args["model"], "restarts": self.ctx.restarts}

    async def handle_call(self, msg: Any, state: Any) -> tuple[Any, Any]:
        from mabeam.v1 import model_pb2

        request = model_pb2.CompleteRequest(model=state["model"], messages=[
            model_pb2.ChatMessage(role="user", content=str(msg["prompt"]))])
        reply = await self.stub.Complete(request)
        return {"content": reply.content, "model": reply.receipt.model, "route": reply.receipt.route,
                "restarts": state["restarts"]}, state

    async def terminate(self, reason: str, state: Any) -> None:
        await self.channel.close()



class Tasker(Agent):
    """A durable-run agent (demo, tests, bench). Each frame's payload says what to do::

        {"steps": 3, "delay": 0.1}   # three memoized steps, a "progress" event after each, delay s between
        {"finish": true}             # ... then complete the run with the state
        {"raise": "boom"}            # the handler raises (the run fails with "handler_error")

    A frame of type "finish" completes the run at once. The state (frames and steps
    handled) is checkpointed after each frame; "calls" counts how often step bodies ran
    in this process (a replay after a crash does not run them again).
    """

    calls = 0

    async def handle_frame(self, frame: Frame, run: Run) -> None:
        payload = frame.payload if isinstance(frame.payload, dict) else {}
        state = dict(run.state or {"frames": 0, "steps": 0})
        if frame.type == "finish":
            await run.complete(state)
            return
        delay = float(payload.get("delay", 0))
        for index in range(int(payload.get("steps", 1))):
            def work(index: int = index) -> dict[str, Any]:
                Tasker.calls += 1
                return {"frame": frame.frame_id, "step": index, "pid": os.getpid()}

            await run.step(f"work-{index}", work)
            await run.emit("progress", {"frame": frame.frame_id, "step": index})
            if delay:
                await asyncio.sleep(delay)
        if payload.get("raise"):
            raise RuntimeError(str(payload["raise"]))
        state = {"frames": state["frames"] + 1, "steps": state["steps"] + int(payload.get("steps", 1))}
        await run.checkpoint(state)
        if payload.get("finish"):
            await run.complete(state)


EXAMPLES: dict[str, type[Agent]] = {"echo": Echo, "counter": Counter, "relay": Relay, "escalating": Escalating,
                                     "member": Member, "model_worker": ModelWorker, "tasker": Tasker}


def register_examples(registry: AgentRegistry) -> None:
    """Allow the example types."""
    for name, cls in EXAMPLES.items():
        registry.register(name, cls)
