"""Agent types the agentd tests start (shared by unit, integration and fault tests)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import BaseModel

from agentd.behaviour import Agent, Down, Exit
from agentd.errors import InvalidArgument
from agentd.runtime import AgentRegistry

#: Events recorded by test agents, per journal key given in their args: ("start", id), ("stop", id, reason)...
JOURNAL: dict[str, list[tuple[Any, ...]]] = {}


def journal(key: str) -> list[tuple[Any, ...]]:
    """The event list for a journal key (created empty)."""
    return JOURNAL.setdefault(key, [])


class Recorder(Agent):
    """Records start, terminate and messages; crashes, hangs or stops on request."""

    handle_timeout = 2.0

    async def init(self, args: dict[str, Any]) -> Any:
        if args.get("fail_init"):
            raise RuntimeError("init failed on purpose")
        journal(args.get("journal", "")).append(("start", args.get("tag", self.ctx.self_ref.agent_id)))
        return {"args": args, "seen": []}

    async def handle_cast(self, msg: Any, state: Any) -> Any:
        if msg == "crash":
            raise RuntimeError("crash on purpose")
        if msg == "hang":
            await asyncio.sleep(3600)
        if msg == "stop":
            self.ctx.stop("normal")
        if isinstance(msg, dict) and "sleep" in msg:
            await asyncio.sleep(msg["sleep"])
        state["seen"].append(msg)
        return state

    async def handle_call(self, msg: Any, state: Any) -> tuple[Any, Any]:
        if msg == "args":
            return state["args"], state
        if msg == "seen":
            return list(state["seen"]), state
        if msg == "crash":
            raise RuntimeError("crash in call")
        if msg == "bad":
            raise InvalidArgument("bad request")
        if msg == "restarts":
            return self.ctx.restarts, state
        if isinstance(msg, dict) and "block" in msg:
            time.sleep(msg["block"])  # noqa: ASYNC251 -- blocks the whole loop: what the watchdog is for
            return "unblocked", state
        return msg, state

    async def handle_info(self, msg: Any, state: Any) -> Any:
        if isinstance(msg, Down | Exit):
            msg = {"info": type(msg).__name__, "reason": msg.reason}
        state["seen"].append(msg)
        return state

    async def terminate(self, reason: str, state: Any) -> None:
        args = state["args"]
        if args.get("slow_terminate"):
            await asyncio.sleep(3600)
        journal(args.get("journal", "")).append(("stop", args.get("tag", self.ctx.self_ref.agent_id), reason))


class CounterState(BaseModel):
    """A pydantic state, to check checkpoints validate back into the model."""

    n: int = 0
    history: list[int] = []


class Counter(Agent):
    """Adds casts to n; checkpoints after every cast; answers calls with its state."""

    state_model = CounterState

    async def init(self, args: dict[str, Any]) -> Any:
        return CounterState(n=args.get("start", 0))

    async def restore(self, args: dict[str, Any], state: Any) -> Any:
        assert isinstance(state, CounterState)
        return state

    async def handle_cast(self, msg: Any, state: Any) -> Any:
        if msg == "crash":
            raise RuntimeError("crash on purpose")
        state = CounterState(n=state.n + msg, history=[*state.history, msg])
        await self.ctx.checkpoint(state)
        return state

    async def handle_call(self, msg: Any, state: Any) -> tuple[Any, Any]:
        if msg == "pid":
            import os

            return os.getpid(), state
        return state.n, state


class Escalating(Recorder):
    """Asks for a 'stronger model' from its third restart on (the restart policy hook)."""

    @classmethod
    def restart_policy(cls, spec: Any, attempt: int, last_reason: str) -> dict[str, Any] | None:
        if attempt >= 3:
            return {**spec.start.args, "model": "large", "attempt": attempt, "last_reason": last_reason}
        return None


def make_registry() -> AgentRegistry:
    """A registry with every test agent type."""
    registry = AgentRegistry()
    registry.register("recorder", Recorder)
    registry.register("counter", Counter)
    registry.register("escalating", Escalating)
    return registry

