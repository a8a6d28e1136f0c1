"""The model scenes of ``make demo``: an agentd with ``[models]`` in front of the local fake LLM server.

Nothing here needs the internet: the fake server (``mabeam.dev.fakellm``) plays
a cheap model that hangs, a flaky primary that answers 503, and a strong model.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mabeam.dev.fakellm.process import FakeLLMProcess
from mabeam.startup import parse_ready_line
from mabeam_client.agents import AgentClient
from mabeam_client.errors import Aborted, MabeamError, NotFound, Unavailable
from mabeam_client.models import ModelClient

console = Console()

CONFIG = """
[models.providers.primary]
kind = "openai"
base_url = "{openai}"
breaker_failures = 2
breaker_open_s = 30

[models.providers.backup]
kind = "anthropic"
base_url = "{url}"

[models.models.cheap]
provider = "backup"
name = "fake-cheap"
input_per_1k_usd = 0.0001
output_per_1k_usd = 0.0004

[models.models.strong]
provider = "backup"
name = "fake-strong"
input_per_1k_usd = 0.003
output_per_1k_usd = 0.015

[models.models.flaky]
provider = "primary"
name = "fake-flaky"
input_per_1k_usd = 0.0005
output_per_1k_usd = 0.0015

[models.routes.chat]
primary = "flaky"
fallbacks = ["strong"]

[models.retry]
max_attempts = 2
base_s = 0.05
attempt_timeout_s = 30

[models.budgets.tenants.frugal]
tokens = 40
"""

SCRIPT = {"rules": [
    {"model": "fake-cheap", "fault": {"hang": True, "hang_s": 30}},
    {"model": "fake-flaky", "fault": {"status": 503}},
    {"match": "poem", "reply": "Supervised agents / crash, restart, and carry on / the budget holds firm",
     "fault": {"chunk_delay_ms": 40}},
]}


def _receipt(receipt) -> str:  # type: ignore[no-untyped-def]
    return (f"{receipt.provider}/{receipt.model} via route {receipt.route}: path {' -> '.join(receipt.path)}, "
            f"{receipt.attempts} attempts, {receipt.usage.input_tokens}+{receipt.usage.output_tokens} tokens, "
            f"${receipt.cost_nusd / 1e9:.6f}, {receipt.latency_seconds * 1000:.0f} ms")


def models_scene(step: Callable[[str], None]) -> None:
    """Fallback with receipts, live streaming, a budget refusal, and escalation to a stronger model."""
    with FakeLLMProcess(SCRIPT) as llm, tempfile.TemporaryDirectory(prefix="mabeam-demo-models-") as work:
        config = Path(work) / "agentd.toml"
        config.write_text(CONFIG.format(openai=llm.openai_base, url=llm.url))
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentd", "--config", str(config), "--grpc-address", "127.0.0.1:0",
             "--workers", "1", "--examples", "--data-dir", str(Path(work) / "data"), "--log-level", "ERROR"],
            stdout=subprocess.PIPE, text=True, env=dict(os.environ))
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            ready = parse_ready_line(line)
            if ready is None or ready.kind != "agentd":
                raise RuntimeError(f"agentd with [models] did not start: {line!r}")
            endpoint = str(ready.fields["grpc"])
            asyncio.run(_scenes(step, endpoint, llm))
        finally:
            proc.terminate()
            proc.wait(30)


async def _scenes(step: Callable[[str], None], endpoint: str, llm: FakeLLMProcess) -> None:
    async with ModelClient(endpoint) as models, AgentClient(endpoint) as agents:
        step("16. models: one interface over providers, keys and budgets in agentd (local fake LLM server)")
        listing = await models.list_models()
        table = Table("model", "provider", "kind", "$/1k in", "$/1k out", "breaker", title="meshctl model list")
        for m in listing.models:
            table.add_row(m.name, m.provider, m.provider_kind, f"{m.input_per_1k_usd:g}", f"{m.output_per_1k_usd:g}",
                          m.breaker_state)
        console.print(table)
        reply = await models.complete("chat", "Say hello")
        console.print(f"route chat: the primary answers 503, retried once, then the fallback answers: "
                      f"[bold]{reply.content}[/bold]")
        console.print(f"receipt: {_receipt(reply.receipt)}")
        reply = await models.complete("chat", "Say hello again")
        console.print(f"two failures opened the primary's circuit breaker: {_receipt(reply.receipt)}")

        step("17. tokens stream live (StreamComplete), then the receipt")
        console.print("strong> ", end="")
        async for event in models.stream("strong", "write a poem"):
            kind = event.WhichOneof("event")
            if kind == "text":
                console.print(event.text, end="")
            elif kind == "done":
                console.print()
                console.print(f"receipt: {_receipt(event.done.receipt)}")

        step("18. a budget that holds: tenant 'frugal' has 40 tokens; the worst case does not fit")
        before = llm.stats()["requests"]
        try:
            await models.complete("strong", "Explain everything", tenant="frugal", max_tokens=100)
        except MabeamError as error:
            console.print(f"refused before sending: {error.code.name} {error.reason}: {error.message}")
        console.print(f"requests the model server saw meanwhile: {llm.stats()['requests'] - before}")

        step("19. escalation (restart policy): the cheap model hangs, the agent's timeout kills it twice, "
             "the supervisor restarts it on the strong model")
        await agents.spawn("model_worker", {"endpoint": endpoint, "model": "cheap", "escalate_to": "strong",
                                            "escalate_after": 2}, name="writer", restart="permanent")
        for attempt in range(1, 20):
            try:
                answer = await agents.call("writer", {"prompt": "summarise the demo"}, timeout=30)
            except Aborted as error:
                console.print(f"call {attempt}: {error.message}")
                continue
            except (NotFound, Unavailable):
                await asyncio.sleep(0.2)  # restarting
                continue
            console.print(f"call {attempt}: answered by [bold]{answer['model']}[/bold] after {answer['restarts']} "
                          f"restarts: {answer['content']}")
            break
