"""The pipeline executor: order, conditions, maps, retries, fallbacks, memoized steps (no I/O, no waiting)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agentd.pipelines.executor import InMemoryMemo, PipelineExecutor, PipelineFailed, StepFailed
from mabeam.pipelines.spec import parse_pipeline
from mabeam.pipelines.template import TemplateProblem, compile_template


class Runner:
    """A test double for the runner: records calls, fails on request, tracks concurrency."""

    def __init__(self, fail: dict[str, int] | None = None, hang: set[str] | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail = dict(fail or {})
        self.hang = hang or set()
        self.running = 0
        self.peak = 0

    async def _work(self, kind: str, what: str, payload: Any) -> Any:
        self.calls.append((kind, payload))
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(0)  # let siblings start, so the concurrency bound is exercised
            if what in self.hang:
                await asyncio.Event().wait()
            if self.fail.get(what, 0) > 0:
                self.fail[what] -= 1
                raise RuntimeError(f"{what} broke")
            return f"{kind}:{payload}"
        finally:
            self.running -= 1

    async def model(self, fields: dict[str, Any], timeout: float, key: str) -> Any:
        return await self._work("model", fields.get("model", ""), fields.get("prompt"))

    async def tool(self, name: str, args: dict[str, Any], timeout: float, key: str) -> Any:
        return await self._work("tool", name, args)

    async def agent(self, name: str, message: Any, timeout: float, key: str) -> Any:
        return await self._work("agent", name, message)


async def no_sleep(_seconds: float) -> None:
    return None


def executor(runner: Runner, memo: InMemoryMemo | None = None, events: list | None = None) -> PipelineExecutor:
    async def emit(kind: str, payload: dict) -> None:
        if events is not None:
            events.append((kind, payload))

    return PipelineExecutor(runner, memo or InMemoryMemo(), emit, no_sleep)


CHAIN = """\
version: 1
name: chain
inputs: {q: {type: string}}
steps:
  - {id: a, kind: model, model: m, prompt: "A ${{ inputs.q }}"}
  - {id: b, kind: tool, tool: t, args: {x: "${{ steps.a.output }}"}}
  - {id: c, kind: agent, agent: helper, message: {got: "${{ steps.b.output }}"}, needs: [b]}
"""


async def test_chaining_passes_results_on() -> None:
    runner = Runner()
    out = await executor(runner).run(parse_pipeline(CHAIN), {"q": "why"})
    assert runner.calls == [("model", "A why"), ("tool", {"x": "model:A why"}),
                            ("agent", {"got": "tool:{'x': 'model:A why'}"})]
    assert out == "agent:{'got': \"tool:{'x': 'model:A why'}\"}"


async def test_parallel_map_bounds_concurrency_and_keeps_order() -> None:
    text = """\
version: 1
name: fan
inputs: {items: {type: array}}
steps:
  - id: each
    kind: model
    model: m
    prompt: "item ${{ topic }} #${{ index }}"
    parallel: {over: "${{ inputs.items }}", as: topic, max_parallel: 3}
"""
    runner = Runner()
    out = await executor(runner).run(parse_pipeline(text), {"items": list(range(10))})
    assert out == [f"model:item {i} #{i}" for i in range(10)]
    assert runner.peak == 3


async def test_batches_are_windows() -> None:
    text = """\
version: 1
name: fan
steps:
  - id: each
    kind: tool
    tool: t
    args: {n: "${{ item }}"}
    parallel: {over: "${{ [1, 2, 3, 4, 5] }}", batch_size: 2, max_parallel: 8}
"""
    runner = Runner()
    await executor(runner).run(parse_pipeline(text))
    assert runner.peak == 2 and len(runner.calls) == 5


async def test_when_false_skips_and_output_is_null() -> None:
    text = """\
version: 1
name: cond
inputs: {deep: {type: boolean, default: false}}
steps:
  - {id: a, kind: model, model: m, prompt: x, when: "${{ inputs.deep }}"}
  - {id: b, kind: model, model: m, prompt: "skipped=${{ steps.a.output is none }}"}
"""
    runner = Runner()
    events: list = []
    assert await executor(runner, events=events).run(parse_pipeline(text)) == "model:skipped=true"
    assert runner.calls == [("model", "skipped=true")]
    assert ("pipeline.step_skipped", {"step": "a", "reason": "when is false"}) in events


async def test_retry_then_fallback_then_failure() -> None:
    text = """\
version: 1
name: r
steps:
  - id: a
    kind: model
    model: flaky
    prompt: x
    retry: {attempts: 3}
    fallback: {kind: model, model: backup, prompt: y, retry: {attempts: 2}}
"""
    pipeline = parse_pipeline(text)
    runner = Runner(fail={"flaky": 2})
    assert await executor(runner).run(pipeline) == "model:x"  # third attempt works
    runner = Runner(fail={"flaky": 3})
    assert await executor(runner).run(pipeline) == "model:y"  # fallback
    runner = Runner(fail={"flaky": 3, "backup": 2})
    with pytest.raises(StepFailed, match=r"step 'a' failed after 5 attempt\(s\): RuntimeError: backup broke"):
        await executor(runner).run(pipeline)


async def test_timeout_is_per_attempt_and_fails_fast() -> None:
    text = """\
version: 1
name: t
steps:
  - {id: slow, kind: tool, tool: hang, args: {}, timeout: 0.05, needs: []}
  - {id: other, kind: tool, tool: hang, args: {}, timeout: 30, needs: []}
"""
    runner = Runner(hang={"hang"})
    with pytest.raises(StepFailed) as caught:
        await asyncio.wait_for(executor(runner).run(parse_pipeline(text)), 10)
    assert caught.value.key == "slow" and isinstance(caught.value.error, TimeoutError)


async def test_finished_steps_are_not_run_again_after_a_crash() -> None:
    # First run: step c fails (the "crash"); the memo keeps a and b. Second run: only c runs.
    memo = InMemoryMemo()
    runner = Runner(fail={"helper": 1})
    with pytest.raises(StepFailed):
        await executor(runner, memo).run(parse_pipeline(CHAIN), {"q": "why"})
    assert [c[0] for c in runner.calls] == ["model", "tool", "agent"]
    runner2 = Runner()
    await executor(runner2, memo).run(parse_pipeline(CHAIN), {"q": "why"})
    assert [c[0] for c in runner2.calls] == ["agent"]
    assert memo.calls == {"a": 1, "b": 1, "c": 2}


async def test_map_items_are_memoized_one_by_one() -> None:
    text = """\
version: 1
name: fan
steps:
  - {id: each, kind: tool, tool: t, args: {n: "${{ item }}"}, parallel: {over: "${{ [1, 2, 3] }}"}}
"""
    memo = InMemoryMemo()
    await memo.step("each[1]", _const("recorded"))
    runner = Runner()
    out = await executor(runner, memo).run(parse_pipeline(text))
    assert out == ["tool:{'n': 1}", "recorded", "tool:{'n': 3}"]
    assert len(runner.calls) == 2


def _const(value: Any) -> Any:
    async def fn() -> Any:
        return value
    return fn


async def test_sub_pipeline_with_prefixed_memo_keys(tmp_path: Path) -> None:
    (tmp_path / "child.yaml").write_text(
        "version: 1\nname: child\ninputs: {x: {type: string}}\n"
        "steps:\n  - {id: inner, kind: model, model: m, prompt: 'child ${{ inputs.x }}'}\n")
    (tmp_path / "parent.yaml").write_text(
        "version: 1\nname: parent\nsteps:\n"
        "  - {id: sub, kind: pipeline, pipeline: child.yaml, inputs: {x: hello}}\n")
    from mabeam.pipelines.spec import load_pipeline

    memo = InMemoryMemo()
    out = await executor(Runner(), memo).run(load_pipeline(tmp_path / "parent.yaml"))
    assert out == "model:child hello"
    assert set(memo.results) == {"sub", "sub/inner"}


async def test_bad_runtime_values_fail_with_the_step_named() -> None:
    text = "version: 1\nname: p\nsteps:\n  - {id: m, kind: tool, tool: t, args: {}, parallel: {over: '${{ 5 }}'}}\n"
    with pytest.raises(StepFailed, match="'m'.*not a list"):
        await executor(Runner()).run(parse_pipeline(text))
    text = "version: 1\nname: p\nsteps:\n  - {id: m, kind: model, model: x, prompt: '${{ inputs.nope }}'}\n"
    with pytest.raises(StepFailed, match="'m'.*has no attribute 'nope'"):
        await executor(Runner()).run(parse_pipeline(text))
    declared = text.replace("name: p\n", "name: p\ninputs: {q: {type: string}}\n")
    with pytest.raises(PipelineFailed, match="no input"):
        await executor(Runner()).run(parse_pipeline(declared), {"q": "x", "bogus": 1})
    with pytest.raises(PipelineFailed, match="needs input"):
        await executor(Runner()).run(parse_pipeline(declared), {})


def test_templates_are_sandboxed() -> None:
    with pytest.raises(TemplateProblem, match="unsafe"):
        compile_template("${{ x.__class__.__mro__ }}").render({"x": 1})
    assert compile_template("${{ [1, 2] }}").render({}) == [1, 2]
    assert compile_template("n=${{ n }}, s=${{ s }}").render({"n": 3, "s": "t"}) == "n=3, s=t"
