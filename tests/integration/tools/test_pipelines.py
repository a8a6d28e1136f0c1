"""Pipelines as durable runs: kill -9 of the executing agentd in the middle of a parallel map; every step
that finished before the crash ran exactly once (counted by the model server and the tool ledger), the
pipeline completes on the other node, and its output equals a crash-free run's (run with meshctl)."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from tools_helpers import endpoints, events_until, executing_agentd, ledger_calls, payload

from mabeam_client.runs import RunClient

PIPELINE = """\
version: 1
name: notes
inputs:
  topics: {{type: array}}
steps:
  - id: outline
    kind: model
    model: helper-model
    prompt: "outline {tag}"
  - id: notes
    kind: model
    model: helper-model
    parallel: {{over: "${{{{ inputs.topics }}}}", as: topic, max_parallel: 2}}
    prompt: "note {tag} ${{{{ topic }}}}"
  - id: total
    kind: tool
    tool: add
    args: {{a: "${{{{ steps.notes.output | length }}}}", b: {unique}}}
output:
  outline: "${{{{ steps.outline.output }}}}"
  notes: "${{{{ steps.notes.output }}}}"
  total: "${{{{ steps.total.output }}}}"
"""


async def test_kill_9_mid_map_reruns_no_finished_step(bed: dict[str, Any], tmp_path: Path) -> None:
    llm, cluster, ledger = bed["llm"], bed["cluster"], bed["ledger"]
    tag = uuid.uuid4().hex[:6]
    unique = 1000 + int(tag, 16) % 1000  # finds this test's add call in the shared ledger
    topics = [f"t{i}" for i in range(6)]
    llm.reset({"rules": [{"match": f"note {tag}", "fault": {"latency_ms": 1200}}]})  # echo, slowly
    text = PIPELINE.format(tag=tag, unique=unique)
    payload_in = {"pipeline": text, "source": "notes.yaml", "files": {}, "inputs": {"topics": topics}}
    async with RunClient(endpoints(cluster)) as runs:
        run_id = f"pipe-{tag}"
        await runs.start("pipeline", payload_in, run_id=run_id)

        def done_items(events: list[Any]) -> set[str]:
            return {payload(e)["key"] for e in events
                    if e.type == "step.completed" and payload(e)["key"].startswith("notes[")
                    and "#" not in payload(e)["key"]}

        seen: list[Any] = []
        await events_until(runs, run_id, lambda e: seen.append(e) or len(done_items(seen)) >= 2)
        finished_before = done_items(seen)
        victim = executing_agentd(cluster, (await runs.get(run_id)).executor.node_id)
        cluster.kill_daemon(victim)
        try:
            events = await events_until(runs, run_id, lambda e: False, timeout=180)
        finally:
            cluster.restart_daemon(victim)
    assert events[-1].type == "run.completed", [e.type for e in events][-6:]
    assert "run.executor_lost" in [e.type for e in events]
    counts = llm.stats()["by_prompt"]
    assert counts[f"outline {tag}"] == 1
    for key in finished_before:
        index = int(key[len("notes["):-1])
        assert counts[f"note {tag} {topics[index]}"] == 1, (key, counts)
    assert all(counts[f"note {tag} {t}"] >= 1 for t in topics)
    assert [c["arguments"]["b"] for c in ledger_calls(ledger, "add")].count(unique) == 1
    crashed_output = payload(events[-1])["output"]
    assert crashed_output["total"] == len(topics) + unique
    assert crashed_output["notes"] == [f"echo: note {tag} {t}" for t in topics]

    # The same pipeline without a crash, from the command line: the same output.
    (tmp_path / "notes.yaml").write_text(text)
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mabeam_client.cli", "pipeline", "run", str(tmp_path / "notes.yaml"),
        "--input", f"topics={json.dumps(topics)}", "--agentd", ",".join(endpoints(cluster)), "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(cli.communicate(), 180)
    assert cli.returncode == 0, err.decode()[-2000:]
    final = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")][-1]
    assert final["type"] == "run.completed" and final["payload"]["output"] == crashed_output


async def test_validate_and_refuse_bad_files(bed: dict[str, Any], tmp_path: Path) -> None:
    # meshctl validates on this machine, naming line and field; agentd refuses a bad file too.
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: bad\nsteps:\n  - id: a\n    kind: modle\n    prompt: x\n")
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mabeam_client.cli", "pipeline", "validate", str(bad),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(cli.communicate(), 60)
    assert cli.returncode == 1 and f"{bad}:5:11: steps[0].kind" in out.decode()
    async with RunClient(endpoints(bed["cluster"])) as runs:
        run_id = f"bad-{uuid.uuid4().hex[:6]}"
        await runs.start("pipeline", {"pipeline": bad.read_text(), "source": "bad.yaml"}, run_id=run_id)
        events = await events_until(runs, run_id, lambda e: False)
    end = payload(events[-1])
    assert events[-1].type == "run.failed" and end["error_class"] == "pipeline_invalid"
    assert "bad.yaml:5:11: steps[0].kind" in end["message"]


async def test_agent_steps_sub_pipelines_and_a_failing_step(bed: dict[str, Any], tmp_path: Path) -> None:
    # An agent step calls an agent by name on the other node; a sub-pipeline file travels in the run's input
    # (bundled by meshctl); a step that keeps failing fails the run with the step and its attempts named.
    from mabeam_client.agents import AgentClient

    cluster = bed["cluster"]
    tag = uuid.uuid4().hex[:6]
    async with AgentClient(cluster.nodes[1].agentd.endpoint) as agents:
        await agents.spawn("echo", {}, name=f"echo-{tag}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "double.yaml").write_text(
        "version: 1\nname: double\ninputs: {n: {type: number}}\n"
        "steps:\n  - {id: twice, kind: tool, tool: add, args: {a: '${{ inputs.n }}', b: '${{ inputs.n }}'}}\n")
    (tmp_path / "main.yaml").write_text(
        "version: 1\nname: main\nsteps:\n"
        f"  - {{id: ask, kind: agent, agent: echo-{tag}, message: {{q: 21}}}}\n"
        "  - {id: sub, kind: pipeline, pipeline: sub/double.yaml, inputs: {n: '${{ steps.ask.output.q }}'}}\n"
        "output: '${{ steps.sub.output }}'\n")
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mabeam_client.cli", "pipeline", "run", str(tmp_path / "main.yaml"),
        "--agentd", cluster.nodes[0].agentd.endpoint, "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(cli.communicate(), 120)
    assert cli.returncode == 0, err.decode()[-2000:]
    final = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")][-1]
    assert final["type"] == "run.completed" and final["payload"]["output"] == 42

    failing = ("version: 1\nname: failing\nsteps:\n"
               f"  - {{id: nobody, kind: agent, agent: no-such-agent-{tag}, message: 1, retry: {{attempts: 2, "
               "backoff: 0.01}}\n")
    async with RunClient(endpoints(cluster)) as runs:
        run_id = f"fail-{tag}"
        await runs.start("pipeline", {"pipeline": failing, "source": "failing.yaml"}, run_id=run_id)
        events = await events_until(runs, run_id, lambda e: False)
    end = payload(events[-1])
    assert events[-1].type == "run.failed" and end["error_class"] == "step_failed"
    assert "step 'nobody' failed after 2 attempt(s)" in end["message"]
