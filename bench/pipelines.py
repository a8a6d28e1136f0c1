"""Tools and pipelines: the cost of a tool task, a 100-step parallel pipeline, and crash replays.

- ``tool_task_overhead_p50_us``: a tool call through :class:`agentd.tools.runner.ToolRunner` (lookup,
  argument validation, policy gate, state events, bounds, timeout task, receipt, summary) minus the
  same async function called directly, same process, same run (``tool_direct_p50_us`` beside it);
- ``pipeline_100_parallel_s``: a pipeline whose one step maps 100 model calls with ``max_parallel: 16``,
  run as a durable run on a real agentd against the local model server (StartRun → ``run.completed``,
  every step recorded in the run's log); ``direct_100_parallel_s``: the same 100 requests from a bare
  ``asyncio.gather`` with an httpx client bounded to 16, same server, same run;
  ``ratio_pipeline_parallel`` = direct / pipeline (1.0: no cost over the bare client);
- ``steps_rerun_after_crash``: a 24-item map whose agentd is killed -9 after some items finished; the
  model calls the server received again for items that had finished (must be 0), with
  ``steps_finished_before_crash`` and ``resume_after_kill_s`` beside it.

``python -m bench pipelines [--quick]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from typing import Any

from bench.common import percentile

MAP = """\
version: 1
name: bench-map
inputs:
  items: {{type: array}}
steps:
  - id: each
    kind: model
    model: bench
    parallel: {{over: "${{{{ inputs.items }}}}", as: it, max_parallel: {parallel}}}
    prompt: "{tag} ${{{{ it }}}}"
"""


def run(quick: bool = False) -> dict[str, Any]:
    """All three measurements (see the module docstring)."""
    result: dict[str, Any] = {}
    result.update(asyncio.run(_tool_overhead(2000 if quick else 10000)))
    result.update(_cluster_measurements(quick))
    return result


# --- a tool task against calling the function --------------------------------------------------------------

class _MemoryRun:
    """An in-memory run: what the runner needs, with no store (the overhead of the task machinery alone)."""

    run_id, tenant, agent = "bench-run", "default", "bench"

    def __init__(self) -> None:
        self.events = 0
        self.memo: dict[str, Any] = {}

    async def emit(self, event_type: str, payload: dict[str, Any]) -> int:
        self.events += 1
        return self.events

    async def step(self, key: str, fn: Any) -> Any:
        if key not in self.memo:
            self.memo[key] = await fn()
        return self.memo[key]

    async def wait_approval(self, call_id: str, deadline: float, after: int = 0) -> tuple[bool, str]:
        return True, ""


async def _tool_overhead(count: int) -> dict[str, Any]:
    from agentd.tools.registry import ToolRegistry, tool
    from agentd.tools.runner import ToolCall, ToolRunner

    @tool
    async def add(a: int, b: int) -> int:
        """Adds."""
        return a + b

    runner = ToolRunner(ToolRegistry([add]))
    direct: list[float] = []
    tasked: list[float] = []
    for i in range(count):  # alternate, so both see the same machine
        started = time.perf_counter()
        await add.function(a=i, b=1)
        direct.append(time.perf_counter() - started)
        run = _MemoryRun()
        started = time.perf_counter()
        outcome = await runner.invoke(ToolCall("add", {"a": i, "b": 1}, f"s{i}"), run)
        tasked.append(time.perf_counter() - started)
        assert outcome.ok
    d50, t50 = percentile(direct, 50) * 1e6, percentile(tasked, 50) * 1e6
    return {"tool_direct_p50_us": round(d50, 2), "tool_task_p50_us": round(t50, 1),
            "tool_task_p99_us": round(percentile(tasked, 99) * 1e6, 1),
            "tool_task_overhead_p50_us": round(t50 - d50, 1)}


# --- a 100-step pipeline on a real cluster, and a crash ----------------------------------------------------

def _cluster_measurements(quick: bool) -> dict[str, Any]:
    from mabeam.dev.cluster import DevCluster
    from mabeam.dev.fakellm.process import FakeLLMProcess

    llm = FakeLLMProcess().start()
    saved = {k: os.environ.get(k) for k in ("AGENTD_MODELS",)}
    os.environ["AGENTD_MODELS"] = json.dumps({
        "providers": {"local": {"kind": "openai", "base_url": llm.openai_base}},
        "models": {"bench": {"provider": "local", "name": "fake-bench", "input_per_1k_usd": 0.0001,
                             "output_per_1k_usd": 0.0002}}})
    run_dir = tempfile.mkdtemp(prefix="bench-pipelines-")
    cluster = DevCluster(2, cluster=f"bp{uuid.uuid4().hex[:8]}", lease_ttl=2, agentd=True,
                         run_dir=run_dir, runs_config={"lease_ttl": 2, "janitor_interval_s": 1.0,
                                                       "pending_grace_s": 1.0})
    try:
        cluster.start()
        out: dict[str, Any] = {}
        rounds = 1 if quick else 3
        pipeline_s, direct_s = [], []
        for _ in range(rounds):
            pipeline_s.append(asyncio.run(_pipeline_round(cluster, llm, 100, 16)))
            direct_s.append(asyncio.run(_direct_round(llm, 100, 16)))
        out["pipeline_100_parallel_s"] = round(statistics.median(pipeline_s), 3)
        out["direct_100_parallel_s"] = round(statistics.median(direct_s), 3)
        out["ratio_pipeline_parallel"] = round(out["direct_100_parallel_s"] / out["pipeline_100_parallel_s"], 3)
        out.update(asyncio.run(_crash_round(cluster, llm, 24)))
        return out
    finally:
        cluster.close()
        llm.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _endpoints(cluster: Any) -> list[str]:
    return [n.agentd.endpoint for n in cluster.nodes if n.agentd is not None and n.agentd.alive]


async def _pipeline_round(cluster: Any, llm: Any, items: int, parallel: int) -> float:
    from mabeam_client.runs import RunClient

    tag = uuid.uuid4().hex[:8]
    text = MAP.format(tag=tag, parallel=parallel)
    async with RunClient(_endpoints(cluster)) as runs:
        started = time.perf_counter()
        await runs.start("pipeline", {"pipeline": text, "source": "map.yaml",
                                      "inputs": {"items": list(range(items))}}, run_id=f"bench-{tag}")
        async for event in runs.stream(f"bench-{tag}"):
            if event.type in ("run.completed", "run.failed", "run.canceled"):
                if event.type != "run.completed":
                    raise RuntimeError(f"bench pipeline ended {event.type}: {event.payload_json[:500]}")
                break
        return time.perf_counter() - started


async def _direct_round(llm: Any, items: int, parallel: int) -> float:
    import httpx

    tag = uuid.uuid4().hex[:8]
    gate = asyncio.Semaphore(parallel)
    async with httpx.AsyncClient(base_url=llm.openai_base, timeout=60) as http:
        async def one(i: int) -> None:
            async with gate:
                response = await http.post("/chat/completions", json={
                    "model": "fake-bench", "messages": [{"role": "user", "content": f"{tag} {i}"}]})
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(items)))
        return time.perf_counter() - started


async def _crash_round(cluster: Any, llm: Any, items: int) -> dict[str, Any]:
    from mabeam_client.runs import RunClient

    tag = uuid.uuid4().hex[:8]
    llm.reset({"rules": [{"match": tag, "fault": {"latency_ms": 400}}]})
    text = MAP.format(tag=tag, parallel=4)
    finished: set[int] = set()
    async with RunClient(_endpoints(cluster)) as runs:
        run_id = f"crash-{tag}"
        await runs.start("pipeline", {"pipeline": text, "source": "map.yaml",
                                      "inputs": {"items": list(range(items))}}, run_id=run_id)
        last = 0
        async for event in runs.stream(run_id):
            last = event.seq
            if event.type == "step.completed":
                key = json.loads(event.payload_json)["key"]
                if key.startswith("each[") and "#" not in key:
                    finished.add(int(key[5:-1]))
            if len(finished) >= items // 3:
                break
        node = (await runs.get(run_id)).executor.node_id
        victim = next(n.agentd for n in cluster.nodes if n.node_id == node)
        before = dict(llm.stats()["by_prompt"])
        cluster.kill_daemon(victim)
        killed = time.perf_counter()
        resumed = 0.0
        status = ""
        async for event in runs.stream(run_id, cursor=last):
            if event.type == "run.executor_acquired" and not resumed:
                resumed = time.perf_counter() - killed
            if event.type in ("run.completed", "run.failed", "run.canceled"):
                status = event.type
                break
        cluster.restart_daemon(victim)
    after = llm.stats()["by_prompt"]
    rerun = sum(1 for i in finished if after.get(f"{tag} {i}", 0) > before.get(f"{tag} {i}", 0))
    return {"steps_rerun_after_crash": rerun, "steps_finished_before_crash": len(finished),
            "crash_run_status": status, "resume_after_kill_s": round(resumed, 2)}
