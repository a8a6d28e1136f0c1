"""The agent-work scene of ``make demo``: an LLM agent answers in a durable run, against the local model server.

The model (``mabeam.dev.fakellm``, scripted) asks for two tools at once: ``weather``
runs, ``refund`` is gated ``ask`` and waits for a human. The executing agentd is
killed with -9 while it waits; the janitor resumes the run on another node, which
waits for the same approval; ``meshctl run approve`` approves it; the refund runs
once, the model answers, and the server's request counter shows that the finished
model call was replayed from the log, not asked again.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from mabeam.dev.cluster import DevCluster
from mabeam.dev.fakellm.process import FakeLLMProcess

console = Console()

QUESTION = "What is the weather in Oslo, and can you refund order 42 (10 EUR)?"
SCRIPT = {"rules": [
    {"match": "weather in Oslo", "times": 1, "tool_calls": [
        {"name": "weather", "arguments": {"city": "Oslo"}},
        {"name": "refund", "arguments": {"order_id": "42", "amount": 10}}]},
    {"match": "weather in Oslo",
     "reply": "It is cloudy and mild in Oslo. Order 42 has been refunded: 10 EUR are on their way back.",
     "fault": {"chunk_delay_ms": 30}},
]}


def configure(llm: FakeLLMProcess, ledger: Path) -> None:
    """The environment every agentd of the demo inherits: the models, the LLM agent type, the tool ledger."""
    os.environ["AGENTD_MODELS"] = json.dumps({
        "providers": {"local": {"kind": "openai", "base_url": llm.openai_base}},
        "models": {"assistant": {"provider": "local", "name": "fake-assistant",
                                 "input_per_1k_usd": 0.0005, "output_per_1k_usd": 0.0015}}})
    os.environ["AGENTD_LLM_AGENTS"] = json.dumps({"concierge": {
        "model": "assistant", "system_prompt": "You help customers. Use the tools.",
        "tools": ["weather", "refund"],
        "policy": [{"tool": "refund", "verdict": "ask", "reason": "refunds need a human's approval"}]}})
    os.environ["MABEAM_TOOL_LEDGER"] = str(ledger)


async def llm_agent_scene(cluster: DevCluster, llm: FakeLLMProcess, ledger: Path, step: Any) -> None:
    """The scene (see the module docstring)."""
    from mabeam_client.runs import RunClient

    llm.reset(SCRIPT)
    node1, node2 = cluster.nodes[0], cluster.nodes[1]
    assert node1.agentd is not None and node2.agentd is not None
    step("9. an LLM agent in a durable run: two tools in parallel, one needs a human's approval")
    everyone = [n.agentd.endpoint for n in cluster.nodes if n.agentd is not None]
    async with RunClient(everyone) as runs:
        await runs.start("concierge", QUESTION, run_id="demo-concierge")
        console.print(f"asked the 'concierge' agent on node-1: {QUESTION!r}")
        call_id = ""
        async with asyncio.timeout(120):
            async for event in runs.stream("demo-concierge"):
                data = json.loads(event.payload_json)
                if event.type == "model.receipt":
                    console.print(f"  model call: {data.get('model')} {data.get('usage', {})}", highlight=False)
                elif event.type == "tool.state":
                    console.print(f"  tool {data['tool']}: {data['state']}", highlight=False)
                elif event.type == "tool.approval_requested":
                    call_id = data["tool_call_id"]
                    console.print(f"  [yellow]tool {data['tool']} waits for approval[/yellow] ({data['reason']}): "
                                  f"{data['arguments']}", highlight=False)
                    break
        executor = (await runs.get("demo-concierge")).executor.node_id
        step(f"10. kill -9 {executor}'s agentd while the run waits; approve from the CLI; the run finishes elsewhere")
        victim = next(n.agentd for n in cluster.nodes if n.node_id == executor and n.agentd is not None)
        cluster.kill_daemon(victim)
        killed = time.monotonic()
        while True:
            run = await runs.get("demo-concierge")
            if run.executor.node_id and run.executor.node_id != executor:
                break
            await asyncio.sleep(0.2)  # the demo shows the takeover as it happens; tests wait on conditions
        console.print(f"  the janitor resumed the run on {run.executor.node_id} after "
                      f"{time.monotonic() - killed:.1f} s; it waits for the same approval")
        survivors = ",".join(n.agentd.endpoint for n in cluster.nodes if n.agentd is not None and n.agentd.alive)
        command = [sys.executable, "-m", "mabeam_client.cli", "run", "approve", "demo-concierge", call_id,
                   "--note", "approved by the demo", "--agentd", survivors]
        console.print("  $ meshctl run approve demo-concierge " + call_id, highlight=False)
        cli = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
        out, _ = await cli.communicate()
        console.print("  " + out.decode().strip(), highlight=False)
        answer = ""
        async for event in runs.stream("demo-concierge"):
            data = json.loads(event.payload_json)
            if event.type == "tool.receipt":
                console.print(f"  tool {data['tool']}: {data['state']} (attempts {data['attempts']}, "
                              f"{data['latency_ms']:.0f} ms)", highlight=False)
            elif event.type == "agent.answer":
                answer = data["text"]
            elif event.type in ("run.completed", "run.failed", "run.canceled"):
                console.print(f"  run {event.type.split('.')[1]} (executed by {run.executor.node_id} after the kill)",
                              highlight=False)
        console.print(f"  answer: [bold]{answer}[/bold]")
    stats = await asyncio.to_thread(llm.stats)
    text = await asyncio.to_thread(ledger.read_text)
    refunds = [line for line in text.splitlines() if '"refund"' in line]
    console.print(f"  the model server served {stats['by_prompt'].get(QUESTION, 0)} requests for this question "
                  f"(2 model steps: the one finished before the kill was replayed from the log, not asked again); "
                  f"the refund ran {len(refunds)} time(s)")
    cluster.restart_daemon(victim)
