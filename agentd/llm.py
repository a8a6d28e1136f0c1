"""A ready LLM agent: frame in → model call → tool calls (parallel, bounded) → model → … → final answer.

Use it by subclassing::

    class Helper(LLMAgent):
        model = "small"                      # a route or model of agentd's [models] config
        system_prompt = "You answer questions about the weather."
        tools = (weather, forecast)          # agentd.tools.tool functions
        policy = (PolicyRule(Scope.DEFAULT, "forecast", Verdict.ASK),)
        max_steps = 6

or from agentd's configuration (``[llm_agents.helper]`` with ``model``, ``system_prompt``,
``tools`` — names from the ``tools`` catalogue — ``max_steps`` …; see docs/tools.md).

Each frame is one user turn of a conversation that lives in the run: the model
call streams its tokens into the run's log (``model.delta``), tool calls run as
supervised tool tasks (policy gates, approvals, receipts; :mod:`agentd.tools`),
their results go back to the model, and the loop ends with a final answer
(``agent.answer``, and the run completes when ``complete_run``), the step limit
(the run fails with ``step_limit``) or the budget (``budget_exhausted``).

**Step memoization.** Every model call is the durable step
``turn<N>:model<M>`` and every tool call the step of its deterministic
``tool_call_id``: after a crash the run is delivered again, finished model calls
and tools are replayed from the log (no request reaches the provider, no tool
runs again) and the loop continues from the first unfinished step.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Sequence
from typing import Any, ClassVar

from agentd.behaviour import Agent, Frame, Run
from agentd.runs.context import RunOpRefused
from agentd.tools.policy import PolicyRule, Scope, Verdict
from agentd.tools.registry import Tool, ToolRegistry
from agentd.tools.runner import ToolCall, ToolLimits, ToolOutcome, ToolRunner

#: Model-call refusals that end the loop as a run failure with this error class.
_BUDGET_REASONS = {"BUDGET_EXHAUSTED": "budget_exhausted", "QUOTA_EXCEEDED": "budget_exhausted"}


class LLMAgent(Agent):
    """The LLM agent behaviour; class attributes configure it (see the module docstring)."""

    #: The route or model name from agentd's [models] config.
    model: ClassVar[str] = "default"
    system_prompt: ClassVar[str] = "You are a helpful agent. Use the tools when they help; answer briefly."
    #: The tools the model may call.
    tools: ClassVar[Sequence[Tool]] = ()
    #: allow / deny / ask rules for those tools (the default for a tool with no rule is ``default_verdict``).
    policy: ClassVar[Sequence[PolicyRule]] = ()
    default_verdict: ClassVar[Verdict] = Verdict.ALLOW
    #: Model calls per user turn before the run fails with error class ``step_limit``.
    max_steps: ClassVar[int] = 8
    #: Tool calls of one model answer running at once.
    max_parallel_tools: ClassVar[int] = 4
    temperature: ClassVar[float | None] = 0.0
    max_tokens: ClassVar[int] = 1024
    #: Seconds a human has to approve an ``ask`` tool call before it counts as denied.
    approval_timeout: ClassVar[float] = 3600.0
    #: End the run after the first answer (a question per run); False keeps a conversation open.
    complete_run: ClassVar[bool] = True
    #: A run handles one frame at a time; the conversation itself is the run's checkpoint.
    input_policy: ClassVar[str] = "enqueue"

    _runner: ToolRunner | None = None

    def tool_runner(self) -> ToolRunner:
        """The tool runner of this agent (built once per agent instance)."""
        if self._runner is None:
            limits = ToolLimits(per_agent=self.max_parallel_tools, approval_timeout=self.approval_timeout,
                                default_verdict=self.default_verdict)
            self._runner = ToolRunner(ToolRegistry(self.tools), self.policy, limits=limits)
        return self._runner

    def user_message(self, frame: Frame) -> str:
        """The user's text in a frame: a string payload, or its ``text``/``question``/``content`` field."""
        payload = frame.payload
        if isinstance(payload, str):
            return payload
        if isinstance(payload, dict):
            for key in ("text", "question", "content", "message"):
                if isinstance(payload.get(key), str):
                    return str(payload[key])
        raise ValueError("an LLM agent's frame carries text: a JSON string, or an object with a 'text' field")

    def request(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The model request for the conversation so far (override to add stop words, seed, metadata...)."""
        request: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens}
        if self.temperature is not None:
            request["temperature"] = self.temperature
        if self.tools:
            request["tools"] = [{"name": t.name, "description": t.description,
                                 "parameters": t.schema()["function"]["parameters"]} for t in self.tools]
        return request

    async def handle_frame(self, frame: Frame, run: Run) -> None:
        """One user turn: the model/tool loop until an answer, the step limit or the budget ends it."""
        state = run.state if isinstance(run.state, dict) else {"messages": [], "turns": 0}
        turn = int(state.get("turns", 0))
        try:
            text = self.user_message(frame)
        except ValueError as error:
            await run.fail("invalid_input", str(error))
            return
        conversation: list[dict[str, Any]] = [*state.get("messages", []), {"role": "user", "content": text}]
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        runner = self.tool_runner()
        for step in range(self.max_steps):
            key = f"turn{turn}:model{step}"
            try:
                answer = await run.model(self.request(system + conversation), key=key)
            except RunOpRefused as refused:
                error_class = _BUDGET_REASONS.get(refused.reason, "model_failed")
                await run.fail(error_class, f"model call {key}: {refused.reason}: {refused.message}")
                return
            calls = answer.get("tool_calls") or []
            conversation.append({"role": "assistant", "content": answer.get("content", ""),
                                 "tool_calls": calls})
            if not calls:
                content = str(answer.get("content", ""))
                await run.emit("agent.answer", {"turn": turn, "text": content, "steps": step + 1})
                await run.checkpoint({"messages": conversation, "turns": turn + 1})
                if self.complete_run:
                    await run.complete({"answer": content, "turn": turn})
                return
            outcomes = await self._call_tools(runner, run, key, calls)
            for call, outcome in zip(calls, outcomes, strict=True):
                conversation.append({"role": "tool", "tool_call_id": str(call.get("id", "")),
                                     "name": str(call.get("name", "")), "content": outcome.for_model()})
        await run.fail("step_limit", f"no final answer after {self.max_steps} model calls in turn {turn}")

    async def _call_tools(self, runner: ToolRunner, run: Run, key: str,
                          calls: list[dict[str, Any]]) -> list[ToolOutcome]:
        gate = asyncio.Semaphore(self.max_parallel_tools)

        async def one(index: int, call: dict[str, Any]) -> ToolOutcome:
            async with gate:
                request = ToolCall(str(call.get("name", "")), call.get("arguments"), f"{key}:tool{index}")
                return await runner.invoke(request, run)  # type: ignore[arg-type]  # Run is a ToolRun

        return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(calls))))


def load_object(path: str) -> Any:
    """``package.module:attribute`` → the object (what config paths name)."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"{path!r} must look like 'package.module:name'")
    return getattr(importlib.import_module(module), name)


def make_llm_agent(name: str, spec: dict[str, Any], catalogue: dict[str, Tool]) -> type[LLMAgent]:
    """An :class:`LLMAgent` subclass from a config table (``[llm_agents.<name>]``).

    ``spec``: ``model``, ``system_prompt``, ``tools`` (names from ``catalogue``), ``policy``
    (``[{scope, subject, tool, verdict, reason}]``), ``max_steps``, ``max_parallel_tools``,
    ``temperature``, ``max_tokens``, ``approval_timeout``, ``complete_run``.
    """
    unknown = sorted(set(spec.get("tools", [])) - set(catalogue))
    if unknown:
        raise ValueError(f"llm agent {name!r}: unknown tool(s) {', '.join(unknown)} "
                         f"(catalogue: {', '.join(sorted(catalogue)) or 'empty'})")
    rules = tuple(PolicyRule(Scope(r.get("scope", "default")), str(r["tool"]), Verdict(r["verdict"]),
                             str(r.get("subject", "")), str(r.get("reason", ""))) for r in spec.get("policy", []))
    attributes: dict[str, Any] = {"tools": tuple(catalogue[t] for t in spec.get("tools", [])), "policy": rules}
    for field in ("model", "system_prompt", "max_steps", "max_parallel_tools", "temperature", "max_tokens",
                  "approval_timeout", "complete_run"):
        if field in spec:
            attributes[field] = spec[field]
    return type(f"LLMAgent_{name}", (LLMAgent,), attributes)
