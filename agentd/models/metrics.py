"""Prometheus metrics of the model routers: a collector in the agentd daemon's own registry, reading its router.

Series: ``agentd_model_breaker_state{provider}`` (0 closed, 1 half-open, 2 open),
``agentd_model_breaker_transitions_total{provider,to}``, ``agentd_model_calls_total{route,outcome}``,
``agentd_model_attempts_total{provider,outcome}``, ``agentd_model_tokens_total{model,direction}``,
``agentd_model_cost_usd_total{model}``, ``agentd_model_bulkhead_in_flight{provider}``,
``agentd_model_bulkhead_queued{provider}``, ``agentd_model_cache_hits_total``, ``agentd_model_cache_misses_total``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agentd.models.breaker import BreakerState
from agentd.models.budget import NANO_PER_USD

if TYPE_CHECKING:
    from agentd.models.router import ModelRouter

STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class ModelCollector:
    """Sums the counters of the routers ``routers()`` returns (the daemon's one router) at scrape time."""

    def __init__(self, routers: Callable[[], Iterable[ModelRouter]]) -> None:
        self._routers = routers

    def collect(self) -> Iterator[Metric]:
        """The model series."""
        state = GaugeMetricFamily("agentd_model_breaker_state", "Circuit breaker per provider: 0 closed, "
                                  "1 half-open, 2 open", labels=["provider"])
        transitions = CounterMetricFamily("agentd_model_breaker_transitions", "Breaker state changes",
                                          labels=["provider", "to"])
        calls = CounterMetricFamily("agentd_model_calls", "Model calls by route and outcome",
                                    labels=["route", "outcome"])
        attempts = CounterMetricFamily("agentd_model_attempts", "HTTP attempts by provider and outcome",
                                       labels=["provider", "outcome"])
        tokens = CounterMetricFamily("agentd_model_tokens", "Tokens used", labels=["model", "direction"])
        cost = CounterMetricFamily("agentd_model_cost_usd", "Cost charged", labels=["model"])
        in_flight = GaugeMetricFamily("agentd_model_bulkhead_in_flight", "Calls in flight", labels=["provider"])
        queued = GaugeMetricFamily("agentd_model_bulkhead_queued", "Calls waiting for a slot", labels=["provider"])
        hits = CounterMetricFamily("agentd_model_cache_hits", "Response cache hits")
        misses = CounterMetricFamily("agentd_model_cache_misses", "Response cache misses")
        sums: dict[str, Counter[tuple[str, ...]]] = {k: Counter() for k in
                                                     ("calls", "attempts", "tokens", "cost", "transitions")}
        hit = miss = 0
        for router in list(self._routers()):
            for name, provider in router.providers.items():
                state.add_metric([name], STATE_VALUE[router.breaker_state(name)])
                in_flight.add_metric([name], provider.bulkhead.in_flight)
                queued.add_metric([name], len(provider.bulkhead.queue))
                for outcome, count in provider.attempts.items():
                    sums["attempts"][(name, outcome)] += count
            for event in router.events:
                sums["transitions"][(event["provider"], event["to"])] += 1
            for key, count in router.calls.items():
                sums["calls"][key] += count
            for key, count in router.usage_tokens.items():
                sums["tokens"][key] += count
            for model, nusd in router.cost_nusd.items():
                sums["cost"][(model,)] += nusd
            hit += router.cache.hits
            miss += router.cache.misses
        for family, name in ((calls, "calls"), (attempts, "attempts"), (tokens, "tokens"),
                             (transitions, "transitions")):
            for labels, count in sorted(sums[name].items()):
                family.add_metric(list(labels), count)
        for labels, nusd in sorted(sums["cost"].items()):
            cost.add_metric(list(labels), nusd / NANO_PER_USD)
        hits.add_metric([], hit)
        misses.add_metric([], miss)
        yield from (state, transitions, calls, attempts, tokens, cost, in_flight, queued, hits, misses)
