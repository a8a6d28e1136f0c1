"""Each resilience behaviour against the fake server over real HTTP, with the server's own request counts."""

from __future__ import annotations

import asyncio
import time

import pytest
from models_helpers import ask, router

from agentd.models.breaker import BreakerState
from agentd.models.router import CallFailed, CallOptions
from agentd.models.types import ErrorKind
from mabeam.dev.fakellm.process import FakeLLMProcess
from mabeam.dev.testing import async_wait_until


async def test_answer_and_complete_receipt(fake_llm: FakeLLMProcess) -> None:
    r = router(fake_llm)
    try:
        response, receipt = await r.complete(ask("small", "what is up"))
    finally:
        await r.close()
    assert response.content == "echo: what is up" and response.usage.output_tokens == 5
    assert receipt.provider == "local" and receipt.model == "small" and receipt.route == "small"
    assert receipt.attempts == 1 and receipt.path == ("small:ok",) and not receipt.cache_hit
    assert len(receipt.request_hash) == len(receipt.prompt_hash) == len(receipt.output_hash) == 64
    assert receipt.cost_nusd == 1000 * (3 + 3) + 2000 * 5  # $0.001/1k in = 1,000 nano-dollars a token
    assert receipt.error_class == "" and receipt.latency_s > 0
    assert fake_llm.requests_for("fake-small") == 1


async def test_retries_honour_retry_after(fake_llm: FakeLLMProcess) -> None:
    fake_llm.reset({"rules": [{"model": "fake-small", "fault": {"status": 429, "retry_after": "0.3"}, "times": 2}]})
    r = router(fake_llm)
    started = time.monotonic()
    try:
        response, receipt = await r.complete(ask("small"))
    finally:
        await r.close()
    assert time.monotonic() - started >= 0.6  # two waits of at least Retry-After, not the 10-50 ms backoff
    assert receipt.attempts == 3 and fake_llm.requests_for("fake-small") == 3
    assert response.content == "echo: hello"


async def test_no_retry_on_400_and_the_provider_message_is_kept(fake_llm: FakeLLMProcess) -> None:
    fake_llm.reset({"rules": [{"fault": {"status": 400, "message": "messages[0]: bad role"}}]})
    r = router(fake_llm)
    try:
        with pytest.raises(CallFailed) as failed:
            await r.complete(ask("small"))
    finally:
        await r.close()
    assert failed.value.kind == ErrorKind.REJECTED and "bad role" in failed.value.message
    assert failed.value.receipt.error_class == "rejected" and failed.value.receipt.attempts == 1
    assert fake_llm.requests_for("fake-small") == 1


async def test_breaker_opens_after_n_failures_and_probes_once(fake_llm: FakeLLMProcess) -> None:
    fake_llm.reset({"rules": [{"model": "fake-small", "fault": {"status": 503}}]})
    r = router(fake_llm, retry={"max_attempts": 1},
               provider={"breaker_failures": 3, "breaker_window_s": 60, "breaker_open_s": 0.5})
    try:
        for _ in range(3):
            with pytest.raises(CallFailed) as failed:
                await r.complete(ask("small"))
            assert failed.value.kind == ErrorKind.UNAVAILABLE
        assert r.breaker_state("local") == BreakerState.OPEN
        with pytest.raises(CallFailed) as refused:
            await r.complete(ask("small"))
        assert refused.value.kind == ErrorKind.CIRCUIT_OPEN and refused.value.retry_after_s
        assert fake_llm.requests_for("fake-small") == 3  # the open breaker sent nothing

        async def half_open() -> bool:
            return r.breaker_state("local") == BreakerState.HALF_OPEN

        await async_wait_until(half_open, timeout=10, what="breaker half-open")
        results = await asyncio.gather(*(r.complete(ask("small")) for _ in range(5)), return_exceptions=True)
        kinds = sorted(e.kind.value for e in results if isinstance(e, CallFailed))
        assert kinds == ["circuit_open"] * 4 + ["unavailable"]  # one probe went out and failed
        assert fake_llm.requests_for("fake-small") == 4
        assert r.breaker_state("local") == BreakerState.OPEN

        fake_llm.reset({})  # the provider recovers
        await async_wait_until(half_open, timeout=10, what="breaker half-open again")
        response, _ = await r.complete(ask("small"))
        assert response.content == "echo: hello" and r.breaker_state("local") == BreakerState.CLOSED
        transitions = [(e["from"], e["to"]) for e in r.events]
        assert transitions == [("closed", "open"), ("open", "half_open"), ("half_open", "open"),
                               ("open", "half_open"), ("half_open", "closed")]
    finally:
        await r.close()


async def test_fallback_when_retries_are_spent_and_when_the_breaker_is_open(fake_llm: FakeLLMProcess) -> None:
    fake_llm.reset({"rules": [{"model": "fake-small", "fault": {"status": 500}}]})
    models = {"small": {"provider": "local", "name": "fake-small"},
              "large": {"provider": "other", "name": "fake-large"}}
    from agentd.models.config import ModelsConfig
    from agentd.models.router import ModelRouter

    config = ModelsConfig.model_validate({
        "providers": {"local": {"base_url": fake_llm.openai_base, "breaker_failures": 2, "breaker_open_s": 60},
                      "other": {"base_url": fake_llm.openai_base}},
        "models": models, "routes": {"chat": {"primary": "small", "fallbacks": ["large"]}},
        "retry": {"max_attempts": 2, "base_s": 0.01, "cap_s": 0.02}})
    r = ModelRouter(config)
    try:
        response, receipt = await r.complete(ask("chat"))
        assert receipt.path == ("small:unavailable", "large:ok") and receipt.attempts == 3
        assert receipt.route == "chat" and receipt.model == "large" and response.content == "echo: hello"
        assert fake_llm.requests_for("fake-small") == 2 and fake_llm.requests_for("fake-large") == 1
        # Two failures opened small's breaker: the next call goes straight to the fallback.
        _, receipt = await r.complete(ask("chat"))
        assert receipt.path == ("small:circuit_open", "large:ok") and receipt.attempts == 1
        assert fake_llm.requests_for("fake-small") == 2
    finally:
        await r.close()


async def test_hang_is_cut_by_the_deadline(fake_llm: FakeLLMProcess) -> None:
    fake_llm.reset({"rules": [{"fault": {"hang": True, "hang_s": 30}}]})
    r = router(fake_llm, retry={"attempt_timeout_s": 0.5, "max_attempts": 2, "total_timeout_s": 1.5})
    started = time.monotonic()
    try:
        with pytest.raises(CallFailed) as failed:
            await r.complete(ask("small"))
    finally:
        await r.close()
    elapsed = time.monotonic() - started
    assert failed.value.kind == ErrorKind.TIMEOUT and 0.9 <= elapsed < 10
    assert failed.value.receipt.attempts == 2 and fake_llm.requests_for("fake-small") == 2


async def test_malformed_answer_is_an_error_with_its_class_and_is_retried(fake_llm: FakeLLMProcess) -> None:
    fake_llm.reset({"rules": [{"fault": {"malformed": True}, "times": 1}]})
    r = router(fake_llm)
    try:
        response, receipt = await r.complete(ask("small"))
        assert receipt.path == ("small:ok",) and receipt.attempts == 2
        fake_llm.reset({"rules": [{"fault": {"malformed": True}}]})
        with pytest.raises(CallFailed) as failed:
            await r.complete(ask("small"))
        assert failed.value.receipt.error_class == "malformed"
    finally:
        await r.close()


async def test_bulkhead_bounds_concurrency_and_refuses_beyond_the_queue(fake_llm: FakeLLMProcess) -> None:
    fake_llm.reset({"rules": [{"fault": {"latency_ms": 300}}]})
    r = router(fake_llm, provider={"max_concurrent": 1, "max_queued": 1})
    try:
        results = await asyncio.gather(*(r.complete(ask("small")) for _ in range(3)), return_exceptions=True)
    finally:
        await r.close()
    refused = [e for e in results if isinstance(e, CallFailed)]
    assert len(refused) == 1 and refused[0].kind == ErrorKind.BULKHEAD_FULL
    stats = fake_llm.stats()
    assert stats["by_model"]["fake-small"] == 2 and stats["max_in_flight"] == 1


async def test_cache_opt_in_temperature_zero_only(fake_llm: FakeLLMProcess) -> None:
    r = router(fake_llm)
    cached = CallOptions(cache=True)
    try:
        first, _ = await r.complete(ask("small", temperature=0.0), cached)
        second, receipt = await r.complete(ask("small", temperature=0.0), cached)
        assert second == first and receipt.cache_hit and receipt.cost_nusd == 0
        await r.complete(ask("small", temperature=0.7), cached)
        await r.complete(ask("small", temperature=0.7), cached)  # sampled: never cached unless asked
        await r.complete(ask("small", temperature=0.0))  # not opted in
    finally:
        await r.close()
    assert fake_llm.requests_for("fake-small") == 4


async def test_tenant_rate_limit_refuses_with_retry_after(fake_llm: FakeLLMProcess) -> None:
    r = router(fake_llm, budgets={"tenant_requests_per_minute": 2})
    try:
        await r.complete(ask("small"), CallOptions(tenant="a"))
        await r.complete(ask("small"), CallOptions(tenant="a"))
        with pytest.raises(Exception) as limited:
            await r.complete(ask("small"), CallOptions(tenant="a"))
        await r.complete(ask("small"), CallOptions(tenant="b"))  # another tenant's limit is its own
    finally:
        await r.close()
    assert getattr(limited.value, "kind", None) == ErrorKind.RATE_LIMITED
    assert 0 < (limited.value.retry_after_s or 0) <= 30  # type: ignore[attr-defined]
    assert fake_llm.requests_for("fake-small") == 3


async def test_provider_rate_limit_falls_back_instead_of_waiting_too_long(fake_llm: FakeLLMProcess) -> None:
    from agentd.models.config import ModelsConfig
    from agentd.models.router import ModelRouter

    config = ModelsConfig.model_validate({
        "providers": {"limited": {"base_url": fake_llm.openai_base, "requests_per_minute": 2},
                      "spare": {"base_url": fake_llm.openai_base}},
        "models": {"small": {"provider": "limited", "name": "fake-small"},
                   "large": {"provider": "spare", "name": "fake-large"}},
        "routes": {"chat": {"primary": "small", "fallbacks": ["large"]}},
        "retry": {"max_retry_after_s": 1.0}})
    r = ModelRouter(config)
    try:
        for _ in range(2):  # the burst
            _, receipt = await r.complete(ask("chat"))
            assert receipt.path == ("small:ok",)
        _, receipt = await r.complete(ask("chat"))  # the next slot is 30 s away: fall back, send nothing to small
        assert receipt.path == ("small:rate_limited", "large:ok")
        with pytest.raises(CallFailed) as limited:
            await r.complete(ask("small"))
        assert limited.value.kind == ErrorKind.RATE_LIMITED and 25 < (limited.value.retry_after_s or 0) <= 30
    finally:
        await r.close()
    assert fake_llm.requests_for("fake-small") == 2 and fake_llm.requests_for("fake-large") == 1
