"""ModelService in a real agentd process: listing, completion with receipt, streaming, errors with reasons,
the SDK, meshctl model, and /metrics."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mabeam.dev.fakellm.process import FakeLLMProcess
from mabeam.startup import parse_ready_line
from mabeam_client import errors
from mabeam_client.cli import main as meshctl
from mabeam_client.models import ModelClient, SyncModelClient

CONFIG = """
[models.providers.local]
kind = "openai"
base_url = "{openai}"
api_key_env = "FAKE_LLM_KEY"

[models.providers.flaky]
kind = "openai"
base_url = "{openai}"
api_key_env = "FAKE_LLM_KEY"
breaker_failures = 2
breaker_open_s = 60

[models.providers.claude]
kind = "anthropic"
base_url = "{url}"
api_key_file = "{key_file}"

[models.models.small]
provider = "local"
name = "fake-small"
input_per_1k_usd = 0.001
output_per_1k_usd = 0.002
max_output_tokens = 64

[models.models.broken]
provider = "flaky"
name = "broken"

[models.models.sonnet]
provider = "claude"
name = "claude-fake"

[models.models.cheap]
provider = "local"
name = "fake-cheap"

[models.models.strong]
provider = "local"
name = "fake-strong"

[models.routes.chat]
primary = "small"
fallbacks = ["sonnet"]

[models.retry]
max_attempts = 2
base_s = 0.01
cap_s = 0.02

[models.budgets.tenants.poor]
tokens = 50
"""


@pytest.fixture(scope="module")
def agentd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """An agentd whose [models] point at a fake server; keys from an env var and a file."""
    work = tmp_path_factory.mktemp("models")
    llm = FakeLLMProcess(api_key="k-123").start()
    key_file = work / "claude.key"
    key_file.write_text("k-123\n")
    config = work / "agentd.toml"
    config.write_text(CONFIG.format(openai=llm.openai_base, url=llm.url, key_file=key_file))
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentd", "--config", str(config), "--grpc-address", "127.0.0.1:0",
         "--metrics-address", "127.0.0.1:0", "--workers", "1", "--examples", "--data-dir", str(work / "data"),
         "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**_env(), "FAKE_LLM_KEY": "k-123"})
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    ready = parse_ready_line(line)
    assert ready is not None and ready.kind == "agentd", line + proc.stderr.read()
    fields = ready.fields
    yield {"grpc": fields["grpc"], "metrics": fields["metrics"], "llm_url": llm.url, "llm": llm}  # type: ignore[dict-item]
    proc.terminate()
    assert proc.wait(30) == 0
    assert "k-123" not in proc.stderr.read()  # the key is never logged
    llm.close()


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


async def test_list_complete_and_receipt(agentd: dict[str, str]) -> None:
    async with ModelClient(agentd["grpc"]) as client:
        listing = await client.list_models()
        assert [m.name for m in listing.models] == ["broken", "cheap", "small", "sonnet", "strong"]
        assert listing.models[2].breaker_state == "closed" and listing.models[3].provider_kind == "anthropic"
        assert [(r.name, r.primary, list(r.fallbacks)) for r in listing.routes] == [("chat", "small", ["sonnet"])]
        reply = await client.complete("chat", "how are you", system="be kind", max_tokens=10)
        assert reply.content == "echo: how are you" and reply.finish_reason == "stop"
        receipt = reply.receipt
        assert receipt.route == "chat" and receipt.model == "small" and list(receipt.path) == ["small:ok"]
        assert receipt.usage.output_tokens == 5 and receipt.cost_nusd == 1000 * receipt.usage.input_tokens + 10000
        assert receipt.reserved_tokens >= receipt.usage.input_tokens + receipt.usage.output_tokens
        claude = await client.complete("sonnet", [{"role": "user", "content": "hey"}])
        assert claude.content == "echo: hey" and claude.receipt.provider == "claude"


async def test_stream_events(agentd: dict[str, str]) -> None:
    async with ModelClient(agentd["grpc"]) as client:
        events = [e async for e in client.stream("small", "a b c d")]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "done" and kinds.count("text") >= 4
    assert "".join(e.text for e in events if e.WhichOneof("event") == "text") == events[-1].done.content


async def test_errors_carry_reasons(agentd: dict[str, str]) -> None:
    llm: FakeLLMProcess = agentd["llm"]  # type: ignore[assignment]
    llm.reset({"rules": [{"model": "broken", "fault": {"status": 503}},
                         {"match": "^bad", "fault": {"status": 400, "message": "no such parameter: foo"}}]})
    async with ModelClient(agentd["grpc"]) as client:
        with pytest.raises(errors.ResourceExhausted) as budget:
            await client.complete("small", "hello", tenant="poor")
        assert budget.value.reason == "BUDGET_EXHAUSTED" and "poor" in budget.value.message
        assert llm.stats()["requests"] == 0  # refused before anything was sent
        with pytest.raises(errors.InvalidArgument) as rejected:
            await client.complete("small", "bad request please")
        assert rejected.value.reason == "PROVIDER_REJECTED" and "no such parameter: foo" in rejected.value.message
        with pytest.raises(errors.Unavailable) as down:
            await client.complete("broken", "x")
        assert down.value.reason == "PROVIDER_UNAVAILABLE"
        with pytest.raises(errors.Unavailable) as opened:
            await client.complete("broken", "x")  # the breaker opened after 2 failures
        assert opened.value.reason == "CIRCUIT_OPEN" and opened.value.retry_after and opened.value.retry_after > 1
        with pytest.raises(errors.InvalidArgument) as unknown:
            await client.complete("gpt-17", "x")
        assert unknown.value.reason == "INVALID_FIELD" and "chat" in unknown.value.message
        with pytest.raises(errors.InvalidArgument) as bad:
            await client.complete("small", [{"role": "wizard", "content": "x"}], temperature=3.0, tenant="a/b",
                                  tools=[{"name": ""}])
        assert set(bad.value.field_violations) == {"messages[0].role", "temperature", "tenant", "tools[0].name"}
    llm.reset({})


def test_sync_client_cli_and_metrics(agentd: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    with SyncModelClient(agentd["grpc"]) as client:
        assert client.complete("small", "sync").content == "echo: sync"
    assert meshctl(["model", "list", "--agentd", agentd["grpc"]]) == 0
    assert "sonnet" in capsys.readouterr().out
    assert meshctl(["model", "list", "--json", "--agentd", agentd["grpc"]]) == 0
    assert "fake-small" in capsys.readouterr().out
    assert meshctl(["model", "complete", "small", "from the cli", "--agentd", agentd["grpc"]]) == 0
    captured = capsys.readouterr()
    assert "echo: from the cli" in captured.out and "small:ok" in captured.err
    assert meshctl(["model", "--agentd", agentd["grpc"], "stream", "small", "streamed words"]) == 0
    assert "echo: streamed words" in capsys.readouterr().out
    assert meshctl(["model", "complete", "small", "x", "--tenant", "poor", "--agentd", agentd["grpc"]]) == 1
    assert "RESOURCE_EXHAUSTED" in capsys.readouterr().err
    text = urllib.request.urlopen(f"http://{agentd['metrics']}/metrics", timeout=5).read().decode()
    for series in ('agentd_model_breaker_state{provider="local"}', "agentd_model_calls_total",
                   "agentd_model_attempts_total", "agentd_model_tokens_total", "agentd_model_cost_usd_total",
                   "agentd_model_bulkhead_in_flight"):
        assert series in text, series


def test_missing_api_key_stops_startup_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "agentd.toml"
    config.write_text('[models.providers.p]\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "NO_SUCH_KEY_VAR"\n')
    proc = subprocess.run([sys.executable, "-m", "agentd", "--config", str(config), "--grpc-address", "127.0.0.1:0",
                           "--workers", "1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "NO_SUCH_KEY_VAR" in proc.stderr
    config.write_text('[models.providers.p]\nkind = "gemini"\nbase_url = "http://x"\n')
    proc = subprocess.run([sys.executable, "-m", "agentd", "--config", str(config)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "models.providers.p.kind" in proc.stderr


async def test_restart_policy_escalates_to_a_stronger_model_after_timeouts(agentd: dict[str, str]) -> None:
    """Seed 000: the cheap model hangs, the agent's per-message timeout kills it, its supervisor restarts it,
    and from the second restart on its restart policy swaps the model (cheap -> strong)."""
    from mabeam.dev.testing import async_wait_until
    from mabeam_client.agents import AgentClient

    llm: FakeLLMProcess = agentd["llm"]  # type: ignore[assignment]
    llm.reset({"rules": [{"model": "fake-cheap", "fault": {"hang": True, "hang_s": 20}}]})
    async with AgentClient(agentd["grpc"]) as agents:
        await agents.spawn("model_worker", {"endpoint": agentd["grpc"], "model": "cheap", "escalate_to": "strong",
                                            "escalate_after": 2}, name="writer", restart="permanent")
        outcomes = []

        async def ask_writer() -> object:
            try:
                return await agents.call("writer", {"prompt": "write a haiku"}, timeout=30)
            except errors.Aborted as error:
                outcomes.append(error.message)
                return None
            except (errors.NotFound, errors.Unavailable):
                return None  # restarting

        reply = await async_wait_until(ask_writer, timeout=90, interval=0.1, what="an answer from the writer")
    assert reply == {"content": "echo: write a haiku", "model": "strong", "route": "strong", "restarts": 2}
    assert len(outcomes) == 2 and all("timeout" in text for text in outcomes)
    assert llm.requests_for("fake-cheap") == 2 and llm.requests_for("fake-strong") == 1
    llm.reset({})
