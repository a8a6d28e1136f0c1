"""SDKs: call round trips and throughput from each SDK to the same Python agent, in one run.

``python -m bench sdks [--quick]``. One dev node (meshd + agentd, real processes) hosts agentd's
``echo`` agent. Each SDK calls it through agentd's gRPC API (``AgentService.Call``): N sequential calls
give the p50 round trip, then N calls with 16 in flight give the rate. Beside them, external agents
call the same agent over meshd's data plane (``MeshService.AttachAgent`` → meshd → agentd): a Go
external agent, and a Python one as its baseline. The Python SDK is the baseline of every ratio
(``ratio_calls_per_s_<lang>`` = the language's rate ÷ Python's, same run).

Keys: ``call_p50_us_<lang>``, ``calls_per_s_<lang>`` for python, go, typescript, rust, go_external,
python_external: medians over rounds (3 quick, 5 full); each round measures every language once, in an
order rotated per round, so a load trend on the shared machine does not favour one of them. The Go, TypeScript and Rust figures come from each runner's ``bench`` command
(``make sdk-build`` builds them); a language whose runner is missing is reported as missing.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import percentile, rate
from mabeam.dev.cluster import DevCluster
from mabeam_client.agents import AgentClient
from mabeam_client.external import ExternalAgent

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "clients/conformance"))
from harness import runner_built, runner_command  # noqa: E402

TARGET = "bench-echo"
CONCURRENCY = 16


async def _spawn(agentd: str) -> None:
    async with AgentClient(agentd) as client:
        await client.spawn("echo", {}, name=TARGET)


async def _python(agentd: str, meshd: str, calls: int, external: bool) -> dict[str, Any]:
    if external:
        async with ExternalAgent(meshd, names=["bench-python-external"]) as agent:
            return await _measure("python_external", lambda: agent.call(TARGET, "ping", timeout=10.0), calls)
    async with AgentClient(agentd) as client:
        return await _measure("python", lambda: client.call(TARGET, "ping", timeout=10.0), calls)


async def _measure(lang: str, call: Any, calls: int) -> dict[str, Any]:
    for _ in range(50):
        await call()
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        latencies.append((time.perf_counter() - started) * 1e6)

    async def one(_: int) -> None:
        await call()

    return {f"call_p50_us_{lang}": round(percentile(latencies, 50)),
            f"calls_per_s_{lang}": round(await rate(one, calls, CONCURRENCY))}


def _runner(lang: str, key: str, args: list[str]) -> dict[str, Any]:
    if not runner_built(lang):
        return {f"missing_{key}": "runner not built (make sdk-build)"}
    done = subprocess.run([*runner_command(lang), "bench", *args], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    if done.returncode != 0:
        return {f"failed_{key}": (done.stderr or done.stdout)[-300:]}
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {f"call_p50_us_{key}": int(figures["p50_us"]), f"calls_per_s_{key}": round(figures["calls_per_s"])}


def run(quick: bool) -> dict[str, Any]:
    """Measure every SDK against one echo agent on one dev node."""
    calls, rounds = (300, 3) if quick else (1000, 5)
    cluster = DevCluster(nodes=1, lease_ttl=2, cluster="benchsdk", agentd=True)
    samples: dict[str, list[Any]] = {}
    try:
        cluster.start()
        node = cluster.nodes[0]
        assert node.agentd is not None
        agentd, meshd = node.agentd.endpoint, node.endpoint
        asyncio.run(_spawn(agentd))
        common = ["--agentd", agentd, "--target", TARGET, "--calls", str(calls), "--concurrency", str(CONCURRENCY)]
        measures = [
            lambda: asyncio.run(_python(agentd, meshd, calls, external=False)),
            lambda: asyncio.run(_python(agentd, meshd, calls, external=True)),
            *(lambda lang=lang: _runner(lang, lang, common) for lang in ("go", "typescript", "rust")),
            lambda: _runner("go", "go_external", [*common, "--meshd", meshd, "--external"]),
        ]
        for round_ in range(rounds):
            shift = round_ % len(measures)
            for measure in measures[shift:] + measures[:shift]:
                for key, value in measure().items():
                    samples.setdefault(key, []).append(value)
    finally:
        cluster.close()
    result: dict[str, Any] = {"calls": calls, "concurrency": CONCURRENCY, "rounds": rounds}
    for key, values in samples.items():
        numbers = [v for v in values if isinstance(v, int | float)]
        result[key] = round(statistics.median(numbers)) if len(numbers) == len(values) else values[-1]
    base = result.get("calls_per_s_python") or 0
    for key in [k for k in result if k.startswith("calls_per_s_") and k not in ("calls_per_s_python",
                                                                             "calls_per_s_python_external")]:
        baseline = result.get("calls_per_s_python_external") if key.endswith("_external") else base
        if baseline:
            result[f"ratio_{key}"] = round(result[key] / baseline, 2)
    return result
