"""Model providers for agents: one chat interface, resilience and budgets built in.

What a caller does: build a :class:`agentd.models.router.ModelRouter` from the
``[models]`` section of agentd's config (:mod:`agentd.models.config`) and call
``complete`` / ``stream`` with a :class:`agentd.models.types.ChatRequest`; the
daemon serves the same through the gRPC ``ModelService``
(:mod:`agentd.models.service`).

Layout: pure cores with no I/O and time passed in — :mod:`~agentd.models.types`
(the interface and error tree), :mod:`~agentd.models.breaker`,
:mod:`~agentd.models.retry`, :mod:`~agentd.models.limits` (token buckets and the
bulkhead table), :mod:`~agentd.models.budget` (prices, worst cases, reserve and
settle), :mod:`~agentd.models.cache` (canonical hashes, TTL cache),
:mod:`~agentd.models.sse`; the I/O around them — the httpx adapters
(:mod:`~agentd.models.adapters`), the budget stores (:mod:`~agentd.models.ledger`),
the router and the service. See docs/models.md.
"""
