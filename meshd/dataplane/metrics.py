"""Prometheus metrics of the data plane, defined once per process; labelled children cached.

Hot paths update these once per batch (STACK-NOTES: a labelled-series lookup
costs ~1.2 µs, an inc ~250 ns), through :class:`ChannelMetrics`, which holds
the resolved children of one channel. Counts, batch sizes and latency samples
are accumulated as plain ints and published by the data plane's timer every
tick (0.1 s), off the send and receive paths.
"""

from __future__ import annotations

import collections
import weakref
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric

MESSAGES = Counter("mabeam_dataplane_messages_total", "Envelopes sent or received on a channel.",
                   ["channel", "direction"])
BYTES = Counter("mabeam_dataplane_bytes_total", "Payload bytes sent or received on a channel.",
                ["channel", "direction"])
QUEUE_DEPTH = Gauge("mabeam_dataplane_queue_depth", "Envelopes queued for sending on a channel (all peers).",
                    ["channel"])
BATCH_SIZE = Histogram("mabeam_dataplane_batch_size", "Envelopes per ZeroMQ message sent on a channel.",
                       ["channel"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096))
DROPS = Counter("mabeam_dataplane_drops_total", "Messages or frames dropped, by reason.", ["channel", "reason"])
LATENCY = Histogram("mabeam_dataplane_latency_seconds",
                    "Send-to-deliver latency on a channel (sampled: first envelope of each batch).",
                    ["channel"],
                    buckets=(5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.5, 2.5))


def register_all(registry: CollectorRegistry) -> None:
    """Also export the data plane's series from ``registry`` (meshd's own, which its /metrics serves).

    The series are per process (several planes in one test process add up in them); meshd has one plane.
    """
    for metric in (MESSAGES, BYTES, QUEUE_DEPTH, BATCH_SIZE, DROPS, LATENCY):
        registry.register(metric)


def publish_all() -> None:
    """Publish the accumulated figures of every live :class:`ChannelMetrics` in this process.

    All at once, so a reader never sees a receive counted before the send that caused it
    (several data planes in one process, as in tests, share the series).
    """
    for metrics in list(_LIVE):
        metrics.publish()


_LIVE: weakref.WeakSet[ChannelMetrics] = weakref.WeakSet()


class ChannelMetrics:
    """The cached labelled series of one channel."""

    __slots__ = ("name", "messages_in", "messages_out", "bytes_in", "bytes_out", "queue_depth",
                 "batch_size", "latency", "_drops", "in_messages", "in_bytes", "latencies", "out_messages",
                 "out_bytes", "batch_sizes", "__weakref__")

    def __init__(self, name: str) -> None:
        self.name = name
        self.messages_in = MESSAGES.labels(name, "in")
        self.messages_out = MESSAGES.labels(name, "out")
        self.bytes_in = BYTES.labels(name, "in")
        self.bytes_out = BYTES.labels(name, "out")
        self.queue_depth = QUEUE_DEPTH.labels(name)
        self.batch_size = BATCH_SIZE.labels(name)
        self.latency = LATENCY.labels(name)
        self._drops: dict[str, Counter] = {}
        # Figures accumulated as plain ints between two publish() calls (bounded sample lists).
        self.in_messages = 0
        self.in_bytes = 0
        self.latencies: list[int] = []  # send-to-deliver, ns, first envelope of each batch
        self.out_messages = 0
        self.out_bytes = 0
        self.batch_sizes: list[int] = []
        _LIVE.add(self)

    def publish(self) -> None:
        """Move the accumulated figures into the prometheus series."""
        if self.out_messages:
            # Sent before anything is received, so published no later than the matching receives.
            self.messages_out.inc(self.out_messages)
            self.bytes_out.inc(self.out_bytes)
            self.out_messages = self.out_bytes = 0
        if self.batch_sizes:
            sizes, self.batch_sizes = self.batch_sizes, []
            for size in sizes:
                self.batch_size.observe(size)
        if self.in_messages:
            self.messages_in.inc(self.in_messages)
            self.bytes_in.inc(self.in_bytes)
            self.in_messages = self.in_bytes = 0
        if self.latencies:
            latencies, self.latencies = self.latencies, []
            observe = self.latency.observe
            for ns in latencies:
                observe(max(0.0, ns / 1e9))

    def drop(self, reason: str, count: int = 1) -> None:
        """Count dropped messages (child cached per reason)."""
        child = self._drops.get(reason)
        if child is None:
            child = self._drops[reason] = DROPS.labels(self.name, reason)
        child.inc(count)


#: The sockets inbound frames are counted on besides the four channels: the attach socket and its bulk lane,
#: and "all" for a CURVE handshake denied in a context the channels share.
ATTACH_SOCKET = "attach"
ATTACH_LANE_SOCKET = "attach_lane"
_ATTACH_SOCKETS = frozenset((ATTACH_SOCKET, ATTACH_LANE_SOCKET))


class PlaneCounters:
    """Plain counters one data plane's parts share (read by ``DataPlane.statistics``, tests and /metrics).

    ``rejected_frames``: inbound input refused, by (socket, reason) — a multipart message that is not a
    valid batch, a chunk inconsistent with its message, a CURVE handshake with an unknown key, a system
    operation the socket does not serve (``unknown_op``), an attach operation with an invalid field
    (``bad_field``: a bad agent id or tenant, an oversized name);
    ``rejected``: the same by one label (the reason on a channel, ``attach_<reason>`` on the attach
    socket); ``drops``: messages not delivered or retransmitted, by reason; ``sent`` / ``received``:
    envelopes on the channels.
    """

    __slots__ = ("rejected", "rejected_frames", "drops", "sent", "received")

    def __init__(self) -> None:
        self.rejected: collections.Counter[str] = collections.Counter()
        self.rejected_frames: collections.Counter[tuple[str, str]] = collections.Counter()
        self.drops: collections.Counter[str] = collections.Counter()
        self.sent = 0
        self.received = 0

    def reject(self, socket: str, reason: str) -> None:
        """Count one refused input on ``socket`` (a channel name, :data:`ATTACH_SOCKET`, ...)."""
        self.rejected_frames[(socket, reason)] += 1
        self.rejected[f"{socket}_{reason}" if socket in _ATTACH_SOCKETS else reason] += 1


class RejectedFramesCollector:
    """Exports one data plane's refused input as ``mabeam_dataplane_rejected_frames_total{channel,reason}``.

    Read from the plane's counters at scrape time (nothing on the receive path); registered by meshd in
    its own registry, so several planes in one process (tests) each report their own.
    """

    def __init__(self, counters: PlaneCounters) -> None:
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        """The counter family (a copy of the counts: the scrape runs on the metrics server's thread)."""
        family = CounterMetricFamily(
            "mabeam_dataplane_rejected_frames",
            "Inbound data-plane input refused, by socket (channel, attach, attach_lane) and reason "
            "(frame_count, bad_header, version, chunk_gap, chunk_bad, chunk_memory, curve_denied, unknown_op, "
            "bad_field).",
            labels=["channel", "reason"])
        for (socket, reason), count in sorted(dict(self.counters.rejected_frames).items()):
            family.add_metric([socket, reason], count)
        yield family
