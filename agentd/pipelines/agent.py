"""The ``pipeline`` agent type: runs a pipeline file as a durable run.

A run of type ``pipeline`` takes one frame (its input)::

    {"pipeline": "<the YAML text>", "source": "research.yaml",
     "files": {"child.yaml": "<YAML of a sub-pipeline>"}, "inputs": {"question": "..."}}

The file is checked again here (a bad one fails the run with ``pipeline_invalid``
and every problem in the message); sub-pipelines come from ``files`` only —
agentd never reads a path a client names. Each step is a durable step of the
run, so a pipeline resumed after a crash replays what finished and continues.
``meshctl pipeline run FILE`` builds the frame (bundling the sub-pipelines it
references) and streams the run.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Sequence
from typing import Any, ClassVar

from agentd.behaviour import Agent, Frame, Run, RunCanceled
from agentd.pipelines.executor import PipelineExecutor, PipelineFailed, StepFailed
from agentd.tools.policy import PolicyRule, Scope, Verdict
from agentd.tools.registry import Tool, ToolRegistry
from agentd.tools.runner import ToolCall, ToolLimits, ToolRunner
from mabeam.pipelines.spec import Pipeline, PipelineError, parse_pipeline


class ToolStepFailed(Exception):
    """A pipeline's tool step ended without success (the tool task's error class and message)."""

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(f"{error_class}: {message}")
        self.error_class = error_class


class RunStepRunner:
    """The pipeline executor's :class:`~agentd.pipelines.executor.StepRunner`, bound to one run."""

    def __init__(self, run: Run, tools: ToolRunner, default_model: str = "default") -> None:
        self.run = run
        self.tools = tools
        self.default_model = default_model

    async def model(self, fields: dict[str, Any], timeout: float, key: str) -> Any:
        """A model call as the step ``key``; with ``json_schema`` the answer is parsed JSON."""
        messages = list(fields.get("messages") or [])
        if not messages:
            if fields.get("system"):
                messages.append({"role": "system", "content": str(fields["system"])})
            messages.append({"role": "user", "content": _text(fields.get("prompt", ""))})
        request: dict[str, Any] = {"model": fields.get("model") or self.default_model, "messages": messages}
        for name in ("temperature", "max_tokens"):
            if name in fields:
                request[name] = fields[name]
        if "json_schema" in fields:
            request["response_schema"] = fields["json_schema"]
        answer = await self.run.model(request, key=key)
        content = answer.get("content", "")
        return json.loads(content) if "json_schema" in fields else content

    async def tool(self, name: str, args: dict[str, Any], timeout: float, key: str) -> Any:
        """A tool task (gates, approval, receipt); its output, or ToolStepFailed."""
        outcome = await self.tools.invoke(ToolCall(name, args, key), self.run)  # type: ignore[arg-type]
        if not outcome.ok:
            raise ToolStepFailed(outcome.error_class, outcome.error)
        return outcome.output

    async def agent(self, name: str, message: Any, timeout: float, key: str) -> Any:
        """A call to an agent by name (the pipeline step's memo records the reply)."""
        return await self.run.call(name, message, timeout)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


class PipelineAgent(Agent):
    """Runs the pipeline its run's input frame carries (see the module docstring)."""

    tools: ClassVar[Sequence[Tool]] = ()
    policy: ClassVar[Sequence[PolicyRule]] = ()
    default_model: ClassVar[str] = "default"
    input_policy: ClassVar[str] = "reject"

    async def handle_frame(self, frame: Frame, run: Run) -> None:
        """Check the pipeline, run it with every step memoized, and end the run with its output."""
        payload = frame.payload if isinstance(frame.payload, dict) else {}
        text = payload.get("pipeline")
        if not isinstance(text, str):
            await run.fail("invalid_input", "a pipeline run's input needs 'pipeline': the YAML text of the file")
            return
        source = str(payload.get("source") or "pipeline.yaml")
        files = payload.get("files") or {}
        try:
            pipeline = parse_pipeline(text, source=source)
        except PipelineError as error:
            await run.fail("pipeline_invalid", str(error))
            return
        runner = ToolRunner(ToolRegistry(self.tools), self.policy, limits=ToolLimits())
        executor = PipelineExecutor(RunStepRunner(run, runner, self.default_model), run, run.emit,
                                    loader=_bundle_loader(files, source), fatal=(RunCanceled,))
        try:
            output = await executor.run(pipeline, payload.get("inputs") or {})
        except StepFailed as failed:
            await run.fail("step_failed", str(failed))
            return
        except PipelineFailed as failed:
            await run.fail("pipeline_failed", str(failed))
            return
        await run.complete(output)


def _bundle_loader(files: dict[str, Any], source: str) -> Any:
    """Sub-pipelines from the run's input only, by path relative to the file that names them."""
    base = posixpath.dirname(source)

    def load(parent: Pipeline, path: str) -> Pipeline:
        name = posixpath.normpath(posixpath.join(posixpath.dirname(parent.source) if parent.source else base, path))
        if name.startswith("../") or posixpath.isabs(name) or name == "..":
            raise PipelineFailed(f"sub-pipeline {path!r} points outside the pipeline's files")
        text = files.get(name)
        if not isinstance(text, str):
            raise PipelineFailed(f"sub-pipeline {path!r} (as {name!r}) is not in the run's input files "
                                 f"({', '.join(sorted(files)) or 'none'})")
        return parse_pipeline(text, source=name)

    return load


def make_pipeline_agent(catalogue: dict[str, Tool], policy: Sequence[dict[str, str]]) -> type[PipelineAgent]:
    """The ``pipeline`` agent type with this agentd's tool catalogue and tool policy."""
    rules = tuple(PolicyRule(Scope(r.get("scope", "default")), str(r["tool"]), Verdict(r["verdict"]),
                             str(r.get("subject", "")), str(r.get("reason", ""))) for r in policy)
    return type("PipelineAgent_configured", (PipelineAgent,), {"tools": tuple(catalogue.values()), "policy": rules})
