"""Prometheus metrics of agentd: a collector in the daemon's own registry, reading its worker pool.

Workers report their counts in their heartbeat frames; the collector sums them at
scrape time, so no metric object is created per runtime. The registry is the
daemon's (``mabeam.daemon.Serving.registry``), so several daemons can live in one
test process; requests answered with an error status are the error interceptor's
(``mabeam_rejected_requests_total``, in the same registry).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from agentd.runtime import LATENCY_BUCKETS

if TYPE_CHECKING:
    from agentd.workers import WorkerPool


class AgentdCollector:
    """agents by state, restarts by reason, mailbox depth, handling latency, watchdog events, worker restarts
    and the healing of the link to meshd, of the pools ``pools()`` returns (the daemon's one pool)."""

    def __init__(self, pools: Callable[[], Iterable[WorkerPool]]) -> None:
        self._pools = pools

    def collect(self) -> Iterator[Metric]:
        """Sum the pools' worker statistics."""
        agents = GaugeMetricFamily("agentd_agents", "Live agents by state", labels=["state"])
        restarts = CounterMetricFamily("agentd_restarts", "Agent restarts by reason", labels=["reason"])
        depth = GaugeMetricFamily("agentd_mailbox_depth", "Messages queued in all mailboxes")
        watchdog = CounterMetricFamily("agentd_watchdog_events", "Watchdog events by kind", labels=["kind"])
        worker_restarts = CounterMetricFamily("agentd_worker_restarts", "Worker processes restarted")
        mesh_events = CounterMetricFamily("agentd_mesh_events", "Healing of the link to meshd: detached, "
                                          "reattached, names_lost (to another owner)", labels=["kind"])
        healing = {"detached": 0, "reattached": 0, "names_lost": 0}
        by_state: dict[str, int] = {}
        by_reason: dict[str, int] = {}
        queued = 0
        buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        total = 0.0
        blocked = killed = restarted = 0
        for pool in list(self._pools()):
            blocked += pool.events.blocked
            killed += pool.events.killed
            restarted += pool.events.worker_restarts
            link = getattr(pool, "mesh", None)
            for kind, count in (getattr(link, "events", None) or {}).items():
                healing[kind] = healing.get(kind, 0) + count
            for handle in pool.workers.values():
                stats: dict[str, Any] = handle.stats
                for state, count in stats.get("agents", {}).items():
                    by_state[state] = by_state.get(state, 0) + count
                for reason, count in stats.get("restarts", {}).items():
                    by_reason[reason] = by_reason.get(reason, 0) + count
                queued += max(0, stats.get("mailbox_depth", 0))
                for index, count in enumerate(stats.get("latency_counts", [])):
                    buckets[index] += count
                total += stats.get("latency_sum", 0.0)
        for state, count in sorted(by_state.items()):
            agents.add_metric([state], count)
        for reason, count in sorted(by_reason.items()):
            restarts.add_metric([reason], count)
        depth.add_metric([], queued)
        watchdog.add_metric(["blocked"], blocked)
        watchdog.add_metric(["killed"], killed)
        worker_restarts.add_metric([], restarted)
        for kind, count in sorted(healing.items()):
            mesh_events.add_metric([kind], count)
        cumulative = []
        running = 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else str(bound), running))
        latency = HistogramMetricFamily("agentd_handling_seconds", "Time agents spend in one callback",
                                        buckets=cumulative, sum_value=total)
        yield from (agents, restarts, depth, latency, watchdog, worker_restarts, mesh_events)
