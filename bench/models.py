"""Model calls through agentd's provider layer against a bare httpx client, same run, same local server.

``python -m bench models [--quick]``. One fake LLM server process on loopback
(``mabeam.dev.fakellm``); in this process:

- **direct**: a bare ``httpx.AsyncClient`` POSTs the Chat Completions body and
  parses the JSON answer — the floor;
- **mabeam**: :class:`agentd.models.router.ModelRouter.complete` on the same
  request — canonical hashes, breaker, bulkhead, retry policy, a budget
  reservation and settlement (memory ledger, with a limit so the arithmetic
  runs), the adapter's conversion, and the receipt.

Sequential latencies alternate between the two in rounds (A/B/A/B) so machine
noise hits both alike. ``calls_per_s_64`` runs 64 calls in flight; the cache
hit is the router answering from its response cache. ``budget_overspend``: 100
calls race through two routers sharing an etcd ledger (embedded etcd) for the
last of a tenant budget; settled spending above the limit, in tokens (must be 0).
``layer_cpu_us`` is the layer's own CPU time per call (``time.process_time``)
with both clients on ``httpx.MockTransport`` (no server, no sockets): the
overhead without the noise of a loopback round trip or of other processes on a
busy machine.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import uvloop

from agentd.models.config import ModelsConfig
from agentd.models.ledger import EtcdLedger, MemoryLedger
from agentd.models.router import CallFailed, CallOptions, ModelRouter
from agentd.models.types import ChatRequest, Message
from bench.common import percentile, rate
from mabeam.dev.fakellm.process import FakeLLMProcess
from mabeam.etcd.embedded import EmbeddedEtcd

PROMPT = "Summarise the state of the cluster in one line."


def _config(llm: FakeLLMProcess, budgets: dict[str, Any] | None = None) -> ModelsConfig:
    return ModelsConfig.model_validate({
        "providers": {"local": {"base_url": llm.openai_base, "max_concurrent": 128, "max_connections": 128}},
        "models": {"small": {"provider": "local", "name": "fake-small", "input_per_1k_usd": 0.0005,
                             "output_per_1k_usd": 0.0015, "max_output_tokens": 64}},
        "budgets": budgets or {"default_tenant": {"tokens": 10**15, "cost_usd": 10**6}},
    })


async def _measure(llm: FakeLLMProcess, rounds: int, per_round: int, concurrent_total: int) -> dict[str, float]:
    router = ModelRouter(_config(llm), MemoryLedger())
    request = ChatRequest("small", (Message("user", PROMPT),), max_tokens=32)
    body = {"model": "fake-small", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 32}
    client = httpx.AsyncClient(base_url=llm.openai_base, timeout=30,
                               limits=httpx.Limits(max_connections=128, max_keepalive_connections=128))

    async def direct(_: int = 0) -> None:
        response = await client.post("/chat/completions", json=body)
        response.raise_for_status()
        data = response.json()
        assert data["choices"][0]["message"]["content"]

    async def mabeam(_: int = 0) -> None:
        reply, _receipt = await router.complete(request)
        assert reply.content

    try:
        for _ in range(50):  # warm both connection pools and code paths
            await direct()
            await mabeam()
        samples: dict[str, list[float]] = {"direct": [], "mabeam": []}
        for _ in range(rounds):
            for name, call in (("direct", direct), ("mabeam", mabeam)):
                for _ in range(per_round):
                    started = time.perf_counter()
                    await call()
                    samples[name].append((time.perf_counter() - started) * 1e6)
        direct_rate = await rate(direct, concurrent_total, 64)
        mabeam_rate = await rate(mabeam, concurrent_total, 64)
        cached = CallOptions(cache=True)
        hit_request = ChatRequest("small", (Message("user", PROMPT),), max_tokens=32, temperature=0.0)
        await router.complete(hit_request, cached)
        hits = []
        for _ in range(per_round * rounds):
            started = time.perf_counter()
            _, receipt = await router.complete(hit_request, cached)
            hits.append((time.perf_counter() - started) * 1e6)
            assert receipt.cache_hit
    finally:
        await client.aclose()
        await router.close()
    direct_p50, mabeam_p50 = percentile(samples["direct"], 50), percentile(samples["mabeam"], 50)
    return {
        "direct_p50_us": round(direct_p50, 1), "direct_p99_us": round(percentile(samples["direct"], 99), 1),
        "mabeam_p50_us": round(mabeam_p50, 1), "mabeam_p99_us": round(percentile(samples["mabeam"], 99), 1),
        "overhead_p50_us": round(mabeam_p50 - direct_p50, 1),
        "calls_per_s_64": round(mabeam_rate, 1), "direct_calls_per_s_64": round(direct_rate, 1),
        "ratio_calls_64": round(mabeam_rate / direct_rate, 3),
        "cache_hit_p50_us": round(percentile(hits, 50), 1),
    }


async def _overspend(llm: FakeLLMProcess, etcd: EmbeddedEtcd) -> dict[str, float]:
    limit = 1000
    budgets = {"store": "etcd", "etcd_endpoints": [etcd.endpoint], "cluster": "benchmodels",
               "default_tenant": {"tokens": limit}}
    config = _config(llm, budgets)
    routers = [ModelRouter(config, EtcdLedger([etcd.endpoint], "benchmodels")) for _ in range(2)]
    request = ChatRequest("small", (Message("user", PROMPT),), max_tokens=32)
    try:
        results = await asyncio.gather(*(routers[i % 2].complete(request, CallOptions(tenant="racer"))
                                         for i in range(100)), return_exceptions=True)
        refused = sum(isinstance(r, CallFailed) for r in results)
        other = [r for r in results if isinstance(r, BaseException) and not isinstance(r, CallFailed)]
        if other:
            raise other[0]
        state = await routers[0].ledger.read(routers[0].scopes(CallOptions(tenant="racer"))[0])
    finally:
        for router in routers:
            await router.close()
    return {"budget_overspend": max(0, state.spent_tokens - limit), "budget_calls_answered": 100 - refused,
            "budget_calls_refused": refused, "budget_spent_tokens": state.spent_tokens, "budget_limit_tokens": limit}


async def _layer_cpu(calls: int) -> dict[str, float]:
    """The layer's own CPU per call, without the server's noise: both clients on httpx.MockTransport."""
    answer = json.dumps({"id": "x", "object": "chat.completion", "model": "fake-small", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "all nodes healthy"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 13, "completion_tokens": 3}}).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=answer, headers={"content-type": "application/json"})

    config = ModelsConfig.model_validate({
        "providers": {"local": {"base_url": "http://mock/v1"}},
        "models": {"small": {"provider": "local", "name": "fake-small", "input_per_1k_usd": 0.0005}},
        "budgets": {"default_tenant": {"tokens": 10**15}}})
    router = ModelRouter(config, MemoryLedger(), transports={"local": httpx.MockTransport(handler)})
    client = httpx.AsyncClient(base_url="http://mock/v1", transport=httpx.MockTransport(handler))
    request = ChatRequest("small", (Message("user", PROMPT),), max_tokens=32)
    body = {"model": "fake-small", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 32}
    try:
        # CPU time of this process (everything runs in it): other processes on the cores do not inflate it.
        best = {"direct": float("inf"), "mabeam": float("inf")}
        for _ in range(3):  # alternate and keep each side's best round
            started = time.process_time()
            for _ in range(calls):
                (await client.post("/chat/completions", json=body)).json()
            best["direct"] = min(best["direct"], (time.process_time() - started) / calls * 1e6)
            started = time.process_time()
            for _ in range(calls):
                await router.complete(request)
            best["mabeam"] = min(best["mabeam"], (time.process_time() - started) / calls * 1e6)
    finally:
        await client.aclose()
        await router.close()
    return {"mock_direct_us": round(best["direct"], 1), "mock_mabeam_us": round(best["mabeam"], 1),
            "layer_cpu_us": round(best["mabeam"] - best["direct"], 1)}


def run(quick: bool = False) -> dict[str, Any]:
    """The benchmark; the keys are the issue's, plus the budget race's details."""
    rounds, per_round, total = (4, 250, 2000) if quick else (8, 500, 6000)
    with FakeLLMProcess() as llm:
        result = uvloop.run(_measure(llm, rounds, per_round, total))
        etcd = EmbeddedEtcd(name="bench-models-etcd")
        etcd.start()
        try:
            result.update(uvloop.run(_overspend(llm, etcd)))
        finally:
            etcd.close()
        result["server_requests"] = llm.stats()["requests"]
    result.update(uvloop.run(_layer_cpu(1000 if quick else 3000)))
    result["targets"] = {"overhead_p50_us": "<= 500", "ratio_calls_64": ">= 0.7", "budget_overspend": "== 0"}
    return result
