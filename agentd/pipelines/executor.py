"""Runs a checked pipeline: steps as soon as what they need is done, each step memoized.

The executor owns ordering, conditions, the ``parallel`` map, per-step timeout,
retry with backoff, fallback, sub-pipelines and the output; it does no I/O of its
own. The work itself goes through a :class:`StepRunner` (model calls, tool tasks,
agent calls — agentd supplies one bound to the run), and every finished unit of
work goes through a :class:`Memo`: in a durable run ``memo.step(key, fn)`` records
the result in the run's log, and after a crash returns the recorded result
instead of calling ``fn`` again — so a finished step never runs twice, and a
resumed pipeline continues from the first unfinished one.

Memo keys are ``<step id>`` for a plain step and ``<step id>[<index>]`` for an
item of a map, prefixed by ``<parent step>/`` inside a sub-pipeline. A failed
attempt is not memoized: after a crash an unfinished step is attempted again,
which is why side-effecting tools declare their settlement boundary.

Failure is fail-fast: a step that still fails after its retries and its
fallback fails the pipeline with :class:`StepFailed`, and the steps running
beside it are cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mabeam.pipelines.spec import Pipeline, PipelineError, Step, StepBody, load_pipeline
from mabeam.pipelines.template import TemplateProblem, compile_template, render

MAX_DEPTH = 8


class StepRunner(Protocol):
    """Does the work of one step; agentd binds it to a run (models, tools, agents)."""

    async def model(self, fields: dict[str, Any], timeout: float, key: str) -> Any:
        """A model call from the rendered step fields (model, prompt/messages, system, ...); returns its output.

        ``key`` names this attempt uniquely in the run (``<memo key>#<attempt>``)."""
        ...

    async def tool(self, name: str, args: dict[str, Any], timeout: float, key: str) -> Any:
        """A tool task; returns the tool's output (raises on failure)."""
        ...

    async def agent(self, name: str, message: Any, timeout: float, key: str) -> Any:
        """A call to an agent by name; returns its reply."""
        ...


class Memo(Protocol):
    """Durable step memoization: the recorded result of ``key``, or ``fn()`` recorded now."""

    async def step(self, key: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``fn`` once per key across crashes; later calls return the recorded result."""
        ...


Emit = Callable[[str, dict[str, Any]], Awaitable[Any]]
#: Loads a sub-pipeline named by ``path`` in ``parent`` (the default reads the file next to the parent's).
Loader = Callable[[Pipeline, str], Pipeline]


def load_from_disk(parent: Pipeline, path: str) -> Pipeline:
    """A sub-pipeline file relative to its parent's directory (for pipelines run from files)."""
    target = Path(path)
    if not target.is_absolute():
        target = (parent.base_dir or Path.cwd()) / target
    return load_pipeline(target)


class PipelineFailed(Exception):
    """The pipeline could not finish; the message names the step and why."""


class StepFailed(PipelineFailed):
    """A step still failed after its retries and fallback."""

    def __init__(self, key: str, error: BaseException, attempts: int) -> None:
        self.key = key
        self.error = error
        self.attempts = attempts
        self.error_class = getattr(error, "error_class", type(error).__name__)
        super().__init__(f"step {key!r} failed after {attempts} attempt(s): {type(error).__name__}: {error}")


class InMemoryMemo:
    """A memo that forgets on restart (for pipelines run outside a durable run, and tests)."""

    def __init__(self) -> None:
        self.results: dict[str, Any] = {}
        self.calls: dict[str, int] = {}

    async def step(self, key: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``fn`` the first time ``key`` is seen; return the stored result afterwards."""
        if key in self.results:
            return self.results[key]
        self.calls[key] = self.calls.get(key, 0) + 1
        value = await fn()
        self.results[key] = value
        return value


async def _no_events(_type: str, _payload: dict[str, Any]) -> None:
    return None


@dataclass
class PipelineExecutor:
    """Runs pipelines against a runner and a memo; ``sleep`` is injectable so tests need no waiting."""

    runner: StepRunner
    memo: Memo
    emit: Emit = _no_events
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    loader: Loader = load_from_disk
    #: Exceptions that end the pipeline as they are, never retried (a run's cancellation, say).
    fatal: tuple[type[BaseException], ...] = ()
    _depth: int = field(default=0, repr=False)

    async def run(self, pipeline: Pipeline, inputs: dict[str, Any] | None = None, prefix: str = "") -> Any:
        """Run ``pipeline`` with ``inputs``; returns its output (PipelineFailed / StepFailed when it cannot)."""
        try:
            values = pipeline.resolve_inputs(inputs or {})
        except ValueError as error:
            raise PipelineFailed(str(error)) from None
        outputs: dict[str, Any] = {}
        finished = {s.id: asyncio.Event() for s in pipeline.steps}
        await self.emit("pipeline.started", {"pipeline": pipeline.name, "prefix": prefix})
        try:
            async with asyncio.TaskGroup() as group:
                for step in pipeline.steps:
                    group.create_task(self._step(pipeline, step, values, outputs, finished, prefix),
                                      name=f"pipeline-step-{prefix}{step.id}")
        except BaseExceptionGroup as group_error:
            failures = [e for e in group_error.exceptions if isinstance(e, PipelineFailed)]
            if failures:
                raise failures[0] from None
            raise
        context = {"inputs": values, "steps": {k: {"output": v} for k, v in outputs.items()}}
        if pipeline.output is None:
            result = outputs[pipeline.steps[-1].id]
        else:
            try:
                result = render(pipeline.output, context)
            except TemplateProblem as error:
                raise PipelineFailed(f"pipeline output: {error}") from None
        await self.emit("pipeline.finished", {"pipeline": pipeline.name, "prefix": prefix})
        return result

    async def _step(self, pipeline: Pipeline, step: Step, inputs: dict[str, Any], outputs: dict[str, Any],
                    finished: dict[str, asyncio.Event], prefix: str) -> None:
        for need in step.needs:
            await finished[need].wait()
        key = prefix + step.id
        context: dict[str, Any] = {"inputs": inputs, "steps": {k: {"output": v} for k, v in outputs.items()}}
        try:
            if step.when is not None and not compile_template(step.when).render(context):
                outputs[step.id] = None
                await self.emit("pipeline.step_skipped", {"step": key, "reason": "when is false"})
                return
            if step.parallel is None:
                outputs[step.id] = await self.memo.step(key, lambda: self._attempts(pipeline, step, key, context))
            else:
                outputs[step.id] = await self._map(pipeline, step, key, context)
        except TemplateProblem as error:
            raise StepFailed(key, error, 0) from None
        finally:
            finished[step.id].set()
        await self.emit("pipeline.step_finished", {"step": key})

    async def _map(self, pipeline: Pipeline, step: Step, key: str, context: dict[str, Any]) -> list[Any]:
        assert step.parallel is not None
        items = compile_template(step.parallel.over).render(context)
        if not isinstance(items, list):
            raise StepFailed(key, TypeError(f"parallel.over gave {type(items).__name__}, not a list"), 0)
        results: list[Any] = [None] * len(items)
        gate = asyncio.Semaphore(step.parallel.max_parallel)
        window = step.parallel.batch_size or max(1, len(items))

        async def one(index: int) -> None:
            item_context = {**context, step.parallel.name: items[index], "index": index}  # type: ignore[union-attr]
            item_key = f"{key}[{index}]"
            async with gate:
                results[index] = await self.memo.step(
                    item_key, lambda: self._attempts(pipeline, step, item_key, item_context))

        for start in range(0, len(items), window):
            async with asyncio.TaskGroup() as group:
                for index in range(start, min(start + window, len(items))):
                    group.create_task(one(index))
        return results

    async def _attempts(self, pipeline: Pipeline, step: Step, key: str, context: dict[str, Any]) -> Any:
        attempts = 0
        last: BaseException | None = None
        for body in (step.body, step.fallback):
            if body is None:
                continue
            for attempt in range(1, body.retry.attempts + 1):
                if attempt > 1:
                    await self.sleep(body.retry.delay(attempt))
                attempts += 1
                await self.emit("pipeline.step_attempt", {"step": key, "attempt": attempts,
                                                          "fallback": body is step.fallback})
                try:
                    async with asyncio.timeout(body.timeout):
                        return await self._do(pipeline, body, key, context, f"{key}#{attempts}")
                except TimeoutError:
                    last = TimeoutError(f"step {key!r} took longer than {body.timeout:g} s")
                except self.fatal:
                    raise
                except (TemplateProblem, PipelineFailed, PipelineError) as error:
                    raise StepFailed(key, error, attempts) from None  # retrying cannot fix these
                except Exception as error:  # the runner's errors are the step's failures
                    last = error
                await self.emit("pipeline.step_error", {"step": key, "attempt": attempts,
                                                        "error": f"{type(last).__name__}: {last}"})
        assert last is not None
        raise StepFailed(key, last, attempts)

    async def _do(self, pipeline: Pipeline, body: StepBody, key: str, context: dict[str, Any], attempt: str) -> Any:
        fields = render(body.fields, context)
        if body.kind == "model":
            return await self.runner.model(fields, body.timeout, attempt)
        if body.kind == "tool":
            return await self.runner.tool(fields["tool"], fields.get("args", {}), body.timeout, attempt)
        if body.kind == "agent":
            return await self.runner.agent(fields["agent"], fields["message"], body.timeout, attempt)
        return await self._sub_pipeline(pipeline, fields, key)

    async def _sub_pipeline(self, pipeline: Pipeline, fields: dict[str, Any], key: str) -> Any:
        if self._depth + 1 >= MAX_DEPTH:
            raise PipelineFailed(f"step {key!r}: sub-pipelines nested deeper than {MAX_DEPTH}")
        child = self.loader(pipeline, str(fields["pipeline"]))
        nested = PipelineExecutor(self.runner, self.memo, self.emit, self.sleep, self.loader, self.fatal,
                                  self._depth + 1)
        return await nested.run(child, fields.get("inputs", {}), prefix=f"{key}/")
