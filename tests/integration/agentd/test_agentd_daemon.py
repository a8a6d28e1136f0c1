"""The agentd daemon as a real process: gRPC AgentService, bad requests, health, metrics, CLI, config errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mabeam.dev.testing import wait_until
from mabeam.startup import parse_ready_line
from mabeam_client import errors
from mabeam_client.agents import AgentClient, SyncAgentClient
from mabeam_client.cli_agents import add_commands


@pytest.fixture(scope="module")
def agentd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One agentd process for the module (2 workers, example types, loopback ports)."""
    data = tmp_path_factory.mktemp("agentd")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentd", "--grpc-address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0",
         "--workers", "2", "--examples", "--data-dir", str(data), "--log-level", "WARNING"],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the ready line (or EOF if startup failed)
    ready = parse_ready_line(line)
    assert ready is not None and ready.kind == "agentd", line
    yield {"grpc": ready.fields["grpc"], "metrics": ready.fields["metrics"]}
    proc.terminate()
    assert proc.wait(30) == 0
    # Every worker went with it: no process still has the data dir's store open.
    out = subprocess.run(["pgrep", "-f", f"agentd.worker.*{data}"], capture_output=True, text=True)
    assert out.stdout.strip() == ""


async def test_spawn_call_cast_get_list_tree(agentd: dict[str, str]) -> None:
    async with AgentClient(agentd["grpc"]) as client:
        info = await client.spawn("counter", {"start": 1}, name="g1", restart="permanent")
        assert info.agent_id == "g1" and info.status in ("idle", "running") and info.worker
        await client.cast("g1", 4)
        assert await client.call("g1", "get") == 5
        assert (await client.get("g1")).handled >= 2
        assert "g1" in [a.agent_id for a in await client.list("counter")]
        roots = await client.tree()
        assert len(roots) == 2 and any(c.agent_id == "g1" for r in roots for c in r.children)
        sup = await client.spawn("supervisor", {"strategy": "one_for_all", "children": [
            {"id": "a", "start": {"type": "counter"}}, {"id": "b", "start": {"type": "echo"}}]}, name="team")
        assert [c.agent_id for c in (await client.tree("team"))[0].children] == ["team/a", "team/b"]
        assert sup.is_supervisor
        await client.spawn("echo", name="late", supervisor="team")
        assert await client.call("team/late", {"x": [1, 2]}) == {"x": [1, 2]}
        await client.stop("g1")
        with pytest.raises(errors.NotFound):
            await client.get("g1")


@pytest.mark.parametrize(("kwargs", "error", "text"), [
    ({"agent_type": "os.system"}, errors.InvalidArgument, "unknown agent type"),
    ({"agent_type": ""}, errors.InvalidArgument, "type"),
    ({"agent_type": "counter", "restart": "sometimes"}, errors.InvalidArgument, "restart"),
    ({"agent_type": "counter", "name": "has space"}, errors.InvalidArgument, "id"),
    ({"agent_type": "counter", "supervisor": "nobody"}, errors.NotFound, "nobody"),
    ({"agent_type": "counter", "isolation": "vm"}, errors.InvalidArgument, "isolation"),
    ({"agent_type": "supervisor", "args": {"strategy": "one_for_some"}}, errors.InvalidArgument, "strategy"),
])
async def test_bad_spawn_requests_are_rejected(agentd: dict[str, str], kwargs: dict, error: type, text: str) -> None:
    async with AgentClient(agentd["grpc"]) as client:
        agent_type = kwargs.pop("agent_type")
        with pytest.raises(error, match=text) as caught:
            await client.spawn(agent_type, **kwargs)
        assert caught.value.message


async def test_duplicate_name_bad_json_and_unknown_agent(agentd: dict[str, str]) -> None:
    async with AgentClient(agentd["grpc"]) as client:
        await client.spawn("echo", name="dup")
        with pytest.raises(errors.AlreadyExists, match="dup"):
            await client.spawn("echo", name="dup")
        with pytest.raises(errors.NotFound):
            await client.call("no-such-agent", 1)
        from mabeam.v1 import agent_pb2

        with pytest.raises(errors.InvalidArgument, match="JSON"):
            await client._call(client._stub.SpawnAgent, agent_pb2.SpawnAgentRequest(type="echo", args_json="{oops"))


async def test_mailbox_full_over_grpc_is_resource_exhausted(agentd: dict[str, str]) -> None:
    async with AgentClient(agentd["grpc"]) as client:
        await client.spawn("counter", name="busy")
        # Busy for far longer than 1100 casts take even on a loaded machine; stopped once the point is made.
        busy = asyncio.ensure_future(client.call("busy", {"sleep": 120.0}, timeout=150))
        try:
            with pytest.raises(errors.ResourceExhausted, match="full"):
                for _ in range(1100):  # default capacity 1000
                    await client.cast("busy", 1)
        finally:
            await client.stop("busy")
            busy.cancel()
            with contextlib.suppress(asyncio.CancelledError, errors.MabeamError):
                await busy


async def test_call_deadline_and_aborted(agentd: dict[str, str]) -> None:
    async with AgentClient(agentd["grpc"]) as client:
        await client.spawn("counter", name="sleepy")
        with pytest.raises(errors.DeadlineExceeded):
            await client.call("sleepy", {"sleep": 2}, timeout=0.2)
        with pytest.raises(errors.Aborted, match="crashed on request"):
            await client.call("sleepy", "crash")


def test_health_metrics_and_sync_client(agentd: dict[str, str]) -> None:
    with grpc.insecure_channel(agentd["grpc"]) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    with SyncAgentClient(agentd["grpc"]) as client:
        client.spawn("echo", name="sync-echo")
        assert client.call("sync-echo", "hi") == "hi"
    def scrape() -> str:
        return urllib.request.urlopen(f"http://{agentd['metrics']}/metrics", timeout=5).read().decode()

    # Worker statistics arrive with the heartbeat.
    text = wait_until(lambda: next((t for t in [scrape()] if 'agentd_agents{state="idle"}' in t), ""), 10, interval=0.05,
                      what="agentd_agents in /metrics")
    for name in ("agentd_restarts_total", "agentd_mailbox_depth", "agentd_handling_seconds_bucket",
                 "agentd_watchdog_events_total", "agentd_worker_restarts_total"):
        assert name in text


def test_cli_commands(agentd: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    import argparse
    import inspect

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))

    def run(*argv: str) -> str:
        args = parser.parse_args([argv[0], "--agentd", agentd["grpc"], *argv[1:]])
        result = args.func(args)
        assert (asyncio.run(result) if inspect.isawaitable(result) else result) == 0
        return capsys.readouterr().out

    assert "spawned cli1" in run("spawn", "counter", '{"start": 2}', "--name", "cli1")
    assert run("agent-call", "cli1", '"get"').strip() == "2"
    assert "cli1" in run("agents")
    assert any(a["agent_id"] == "cli1" for a in json.loads(run("agents", "--json")))
    assert "cli1" in run("tree")
    assert "stopped cli1" in run("agent-stop", "cli1")
    # Process groups over gRPC: a member spawned with a group, a cast to it, its local membership.
    run("spawn", "member", '{"groups": ["cli-crew"]}', "--name", "cli-m")
    assert json.loads(run("agent-cast-group", "cli-crew", '"hi"', "--json")) == {"group": "cli-crew",
                                                                                 "local_deliveries": 1}
    assert json.loads(run("agent-call", "cli-m", '"seen"')) == ["hi"]
    with pytest.raises(errors.NotFound):
        run("agent-cast-group", "nobody", '"hi"')


def test_bad_config_stops_startup_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "agentd.toml"
    config.write_text('mailbox_capacity = -3\ngrpc_address = "127.0.0.1:0"\n')
    out = subprocess.run([sys.executable, "-m", "agentd", "--config", str(config)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2 and "mailbox_capacity" in out.stderr
    out = subprocess.run([sys.executable, "-m", "agentd", "--grpc-address", "nope"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2 and "grpc_address" in out.stderr
