"""Budgets under concurrency against real etcd: 100 calls racing for the last of a budget never overspend."""

from __future__ import annotations

import asyncio

from models_helpers import ask, models_config

from agentd.models.budget import Amount
from agentd.models.ledger import EtcdLedger, MemoryLedger, Scope
from agentd.models.router import CallFailed, CallOptions, ModelRouter
from agentd.models.types import ErrorKind
from mabeam.dev.fakellm.process import FakeLLMProcess
from mabeam.etcd.embedded import EmbeddedEtcd


async def test_100_reservations_race_for_ten_slots_across_two_agentds(etcd_server: EmbeddedEtcd,
                                                                    cluster_name: str) -> None:
    """Two ledgers (two agentds, separate etcd clients) race; exactly the reservations that fit win."""
    ledgers = [EtcdLedger([etcd_server.endpoint], cluster_name) for _ in range(2)]
    tenant = Scope("tenant", "t1", 1000, 10_000)
    run = Scope("run", "r1", None, 5_000)  # the run's cost limit binds first: 5 reservations of 1,000
    try:
        results = await asyncio.gather(*(ledgers[i % 2].reserve([tenant], Amount(100, 1_000)) for i in range(100)))
        assert results.count(True) == 10
        state = await ledgers[0].read(tenant)
        assert state.reserved_tokens == 1000 and state.reserved_cost_nusd == 10_000 and state.spent_tokens == 0
        assert sum(ledger.conflicts for ledger in ledgers) > 0  # the race was real: transactions lost compares
        await asyncio.gather(*(ledgers[i % 2].settle([tenant], Amount(100, 1_000), Amount(40, 400))
                               for i in range(10)))
        state = await ledgers[1].read(tenant)
        assert (state.spent_tokens, state.reserved_tokens) == (400, 0)
        # Tenant and run together: all or nothing, the tighter one decides.
        both = await asyncio.gather(*(ledgers[i % 2].reserve([tenant, run], Amount(10, 1_000)) for i in range(20)))
        assert both.count(True) == 5
        assert (await ledgers[0].read(run)).reserved_cost_nusd == 5_000
        assert (await ledgers[0].read(tenant)).reserved_cost_nusd == 5_000
    finally:
        for ledger in ledgers:
            await ledger.close()


async def test_100_concurrent_calls_for_the_last_of_a_tenant_budget(fake_llm: FakeLLMProcess,
                                                                   etcd_server: EmbeddedEtcd,
                                                                   cluster_name: str) -> None:
    """Calls through two routers sharing the etcd ledger: spent never passes the limit, refused calls send
    nothing, and the server saw exactly the calls that were charged."""
    fake_llm.reset({"rules": [{"generate": "fixed", "tokens": 20}]})
    budgets = {"store": "etcd", "etcd_endpoints": [etcd_server.endpoint], "cluster": cluster_name,
               "default_tenant": {"tokens": 400}}
    config = models_config(fake_llm, budgets=budgets)
    routers = [ModelRouter(config, EtcdLedger([etcd_server.endpoint], cluster_name)) for _ in range(2)]
    request = ask("small", "hello", max_tokens=20)  # worst case 8+4+5 prompt bound + 20 = 37; actual 4 + 20 = 24
    try:
        results = await asyncio.gather(*(routers[i % 2].complete(request, CallOptions(tenant="racer"))
                                         for i in range(100)), return_exceptions=True)
        answered = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        assert all(isinstance(e, CallFailed) and e.kind == ErrorKind.BUDGET_EXHAUSTED for e in refused), refused[:3]
        state = await routers[0].ledger.read(routers[0].scopes(CallOptions(tenant="racer"))[0])
        assert state.reserved_tokens == 0
        assert state.spent_tokens == 24 * len(answered) <= 400
        assert state.overspent == Amount()
        assert 10 <= len(answered) <= 16  # 10 fit at their worst case at once; settled calls free room
        assert fake_llm.requests_for("fake-small") == len(answered)
    finally:
        for router in routers:
            await router.close()


async def test_memory_ledger_and_run_budget_through_the_router(fake_llm: FakeLLMProcess) -> None:
    config = models_config(fake_llm, budgets={"per_run": {"cost_usd": 0.00008}})
    router = ModelRouter(config, MemoryLedger())
    request = ask("small", "hello", max_tokens=20)  # worst cost: 17 * 1,000 + 20 * 2,000 = 57,000 nano-dollars
    try:
        _, receipt = await router.complete(request, CallOptions(run_id="run-1"))
        assert receipt.reserved == Amount(37, 57_000) and receipt.cost_nusd == 4 * 1000 + 3 * 2000
        await router.complete(request, CallOptions(run_id="run-1"))
        await router.complete(request, CallOptions(run_id="run-1"))
        try:
            await router.complete(request, CallOptions(run_id="run-1"))  # 30,000 spent + 57,000 > 80,000
        except CallFailed as error:
            assert error.kind == ErrorKind.BUDGET_EXHAUSTED and "run 'run-1'" in error.message
            assert error.receipt.attempts == 0
        else:
            raise AssertionError("the run's budget was not enforced")
        await router.complete(request, CallOptions(run_id="run-2"))  # another run has its own budget
    finally:
        await router.close()


async def test_budget_store_outage_refuses_calls_before_sending(fake_llm: FakeLLMProcess,
                                                                private_etcd: EmbeddedEtcd) -> None:
    config = models_config(fake_llm, budgets={"store": "etcd", "etcd_endpoints": [private_etcd.endpoint],
                                              "default_tenant": {"tokens": 1000}})
    router = ModelRouter(config, EtcdLedger([private_etcd.endpoint], "outage", timeout=1.0))
    try:
        await router.complete(ask("small"))
        private_etcd.stop()
        try:
            await router.complete(ask("small"))
        except CallFailed as error:
            assert error.kind == ErrorKind.LEDGER_UNAVAILABLE and error.retry_after_s
        else:
            raise AssertionError("a call went out without a reservation")
        assert fake_llm.requests_for("fake-small") == 1
        private_etcd.start()
        await router.complete(ask("small"))
    finally:
        await router.close()


async def test_a_tenant_model_quota_in_etcd_tightens_its_budget_and_refuses_with_quota_exceeded(
        fake_llm: FakeLLMProcess, etcd_server: EmbeddedEtcd, cluster_name: str) -> None:
    """The tenant's model_max_tokens (a TenantQuota in etcd, read per call as agentd does) is its budget's
    limit in the one ledger: the call that does not fit is QUOTA_EXCEEDED with the limit, and sends nothing."""
    from agentd.models.service import status_for
    from agentd.quotas import AgentQuota
    from mabeam.etcd.client import EtcdClient
    from mabeam.security.quota import write_quota
    from mabeam.v1 import mesh_pb2

    fake_llm.reset({"rules": [{"generate": "fixed", "tokens": 20}]})
    budgets = {"store": "etcd", "etcd_endpoints": [etcd_server.endpoint], "cluster": cluster_name,
               "default_tenant": {"tokens": 1000}}  # the configured budget is looser: the quota binds
    router = ModelRouter(models_config(fake_llm, budgets=budgets), EtcdLedger([etcd_server.endpoint], cluster_name))
    etcd = EtcdClient([etcd_server.endpoint])
    router.tenant_quota = AgentQuota(etcd, cluster_name, "node-1").model_limits  # as agentd wires it
    request = ask("small", "hello", max_tokens=20)  # worst case 37 tokens; actual 4 + 20 = 24
    try:
        await write_quota(etcd, cluster_name, mesh_pb2.TenantQuota(tenant="acme", model_max_tokens=60))
        await router.complete(request, CallOptions(tenant="acme"))  # 37 fit in 60
        try:
            await router.complete(request, CallOptions(tenant="acme"))  # 24 spent + 37 > 60
            raise AssertionError("a call over the tenant's model quota was sent")
        except CallFailed as refused:
            assert refused.kind == ErrorKind.QUOTA_EXCEEDED
            status = status_for(refused)
            assert (status.reason, dict(status.metadata)) == (
                "QUOTA_EXCEEDED", {"tenant": "acme", "quota": "model_max_tokens", "limit": "60", "used": "24"})
        assert fake_llm.requests_for("fake-small") == 1
        state = await router.ledger.read(router.scopes(CallOptions(tenant="acme"), (60, 0))[0])
        assert (state.spent_tokens, state.reserved_tokens) == (24, 0)
        # Another tenant without a quota keeps the configured budget; raising the quota lets acme call again.
        await router.complete(request, CallOptions(tenant="globex"))
        await write_quota(etcd, cluster_name, mesh_pb2.TenantQuota(tenant="acme", model_max_tokens=100))
        await router.complete(request, CallOptions(tenant="acme"))
    finally:
        await router.close()
        await etcd.close()
