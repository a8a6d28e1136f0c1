"""Tenant rate quotas at meshd's attach ingress: throttles, SDK pacing, muting a client that ignores them."""

from __future__ import annotations

import asyncio
import time

import pytest

from mabeam.dataplane.attach import AttachedEndpoint
from mabeam.dataplane.errors import QuotaExceeded
from mabeam.dev.testing import async_wait_until
from meshd.dataplane import DataPlane
from meshd.dataplane.testing import RawFlooder

Pair = tuple[DataPlane, DataPlane]


class _Quotas:
    """A fixed quota book for the data plane's RateLimiter (meshd's follows etcd)."""

    def __init__(self, **rates: int) -> None:
        from mabeam.v1 import mesh_pb2

        self.quotas = {tenant: mesh_pb2.TenantQuota(tenant=tenant, max_messages_per_second=rate)
                       for tenant, rate in rates.items()}


async def _echo(endpoint: AttachedEndpoint) -> None:
    while True:
        message = await endpoint.receive()
        if message.is_call:
            endpoint.reply_nowait(message, bytes(message.payload))


async def test_a_throttle_reaches_the_sdk_which_paces_a_full_speed_flood_to_the_quota(pair: Pair) -> None:
    from mabeam.security.quota import RateLimiter

    a, _ = pair
    rate = 200
    a.router.limiter = RateLimiter(_Quotas(noisy=rate))
    flood = await AttachedEndpoint.connect(a.attach_address, "flood", "noisy")
    sink = await AttachedEndpoint.connect(a.attach_address, "sink", "noisy", max_pending=1 << 16)
    try:
        # Full speed until meshd's first throttle arrives: the burst of the bucket, then refusals.
        sent = 0
        while flood.events["throttled"] == 0:
            await flood.send(sink.ref, b"x" * 100)
            sent += 1
            if sent % 64 == 0:
                await asyncio.sleep(0)  # let the refusal be read
        refusal = (await flood.receive(timeout=5)).error
        assert isinstance(refusal, QuotaExceeded) and refusal.reason == "QUOTA_EXCEEDED"
        assert refusal.metadata["tenant"] == "noisy" and refusal.metadata["quota"] == "max_messages_per_second"
        assert refusal.metadata["limit"] == str(rate) and "used" in refusal.metadata
        assert refusal.retry_after_s is not None and 0 < refusal.retry_after_s <= 1
        assert flood.pacer is not None and flood.pacer.limit == rate
        # The same loop now runs at the quota: 400 casts take at least ~2 s, and once the casts that were in
        # flight when the throttle came are read, meshd drops (almost) none.
        started = time.monotonic()
        for i in range(400):
            await flood.send(sink.ref, b"x" * 100)
            if i == 100:
                drops = a.counters.drops["quota_exceeded_cast"]
        elapsed = time.monotonic() - started
        assert 400 / elapsed <= 1.5 * rate, f"{400 / elapsed:.0f} casts/s against a quota of {rate}/s"
        assert a.counters.drops["quota_exceeded_cast"] - drops <= 10
        # send_nowait does not wait: it refuses at once, typed, with how long to wait.
        with pytest.raises(QuotaExceeded) as now:
            for _ in range(100):
                flood.send_nowait(sink.ref, b"x")
        assert now.value.retry_after_s is not None and now.value.retry_after_s > 0
        with pytest.raises(QuotaExceeded):  # nor does send(wait_for_quota=False) (agentd's relay)
            for _ in range(100):
                await flood.send(sink.ref, b"x", wait_for_quota=False)
    finally:
        a.router.limiter = None
        for endpoint in (flood, sink):
            await endpoint.close()


async def test_a_call_over_the_quota_gets_quota_exceeded_with_the_limit_and_another_tenant_is_not_limited(
        pair: Pair) -> None:
    from mabeam.security.quota import RateLimiter

    a, _ = pair
    a.router.limiter = RateLimiter(_Quotas(noisy=5))
    noisy = await AttachedEndpoint.connect(a.attach_address, "noisy", "noisy")
    sink = await AttachedEndpoint.connect(a.attach_address, "sink", "noisy", max_pending=1024)
    victim = await AttachedEndpoint.connect(a.attach_address, "victim", "quiet")
    echo = await AttachedEndpoint.connect(a.attach_address, "echo", "quiet")
    server = asyncio.create_task(_echo(echo))
    try:
        for _ in range(20):  # empty the bucket: these go in the same batch as the call, before it
            noisy.send_nowait(sink.ref, b"more")
        with pytest.raises(QuotaExceeded) as refusal:
            await noisy.call(sink.ref, b"call", timeout=3)
        assert refusal.value.metadata["limit"] == "5" and refusal.value.retry_after_s
        for _ in range(50):
            assert (await victim.call(echo.ref, b"ping", timeout=3)).payload == b"ping"
    finally:
        a.router.limiter = None
        server.cancel()
        for endpoint in (noisy, sink, victim, echo):
            await endpoint.close()


async def test_a_raw_client_ignoring_its_throttle_is_muted_and_other_tenants_calls_still_succeed(pair: Pair) -> None:
    from mabeam.security.quota import RateLimiter

    a, _ = pair
    a.router.limiter = RateLimiter(_Quotas(noisy=100))
    sink = await AttachedEndpoint.connect(a.attach_address, "sink", "noisy", max_pending=1 << 16)
    victim = await AttachedEndpoint.connect(a.attach_address, "victim", "quiet")
    echo = await AttachedEndpoint.connect(a.attach_address, "echo", "quiet")
    server = asyncio.create_task(_echo(echo))
    raw = RawFlooder(a.attach_address, "noisy", sink.ref.to_proto())
    raw.thread.start()
    try:
        assert a.attach is not None
        attach = a.attach
        await async_wait_until(lambda: attach.muted >= 1, 30, what="meshd mutes the raw flooder")
        muted = ("attach", "muted")
        await async_wait_until(lambda: a.counters.rejected_frames[muted] > 0, 30, what="muted input dropped")
        # Meanwhile the other tenant's calls through the same meshd answer (generous per-call bound: 2 cores).
        for _ in range(30):
            assert (await victim.call(echo.ref, b"ping", timeout=5)).payload == b"ping"
        assert raw.batches > 0
    finally:
        raw.close()
        a.router.limiter = None
        server.cancel()
        for endpoint in (sink, victim, echo):
            await endpoint.close()
