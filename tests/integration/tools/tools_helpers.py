"""Helpers of the agent-work tests: endpoints, the tool ledger, streaming a run until a condition."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from mabeam.dev.cluster import DevCluster
from mabeam_client.runs import RunClient

TERMINAL = ("run.completed", "run.failed", "run.canceled")


def endpoints(cluster: DevCluster) -> list[str]:
    """The gRPC endpoints of the live agentds."""
    return [n.agentd.endpoint for n in cluster.nodes if n.agentd is not None and n.agentd.alive]


def ledger_calls(path: Path, tool: str) -> list[dict[str, Any]]:
    """Every recorded execution of ``tool`` (the example tools append one line per execution)."""
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["tool"] == tool]


async def events_until(client: RunClient, run_id: str, stop: Any, timeout: float = 90.0) -> list[Any]:
    """Stream the run from the start until ``stop(event)`` is true (or the run ends); the events seen."""
    seen: list[Any] = []
    async with asyncio.timeout(timeout):
        async for event in client.stream(run_id):
            seen.append(event)
            if stop(event) or event.type in TERMINAL:
                return seen
    return seen


def payload(event: Any) -> Any:
    """An event's payload, parsed."""
    return json.loads(event.payload_json)


def executing_agentd(cluster: DevCluster, node_id: str) -> Any:
    """The agentd daemon of ``node_id``."""
    return next(n.agentd for n in cluster.nodes if n.node_id == node_id)
