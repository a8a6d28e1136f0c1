"""The data plane's periodic work: heartbeats, failure detection, retransmission, expiry, gauges.

One task per data plane ticks every ``min(heartbeat_interval, retransmit_after) / 2``
seconds. Heartbeats only detect a silent peer faster; etcd membership stays the
authority for join and leave (``DataPlane.peer_up`` / ``peer_down``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mabeam.dataplane import envelope as wire
from mabeam.dataplane.errors import Unavailable
from meshd.dataplane.calls import PendingCalls
from meshd.dataplane.chunking import Reassembler
from meshd.dataplane.config import DataPlaneConfig
from meshd.dataplane.failure import PeerState
from meshd.dataplane.metrics import ChannelMetrics
from meshd.dataplane.metrics import publish_all as publish_metrics
from meshd.dataplane.outbound import Outbound
from meshd.dataplane.peers import PeerSet
from meshd.dataplane.receiving import Receiver

log = logging.getLogger(__name__)


def fail_node(calls: PendingCalls, reassembler: Reassembler, node_id: str, why: str) -> None:
    """A node left or went silent: its pending calls fail with UNAVAILABLE, its partial messages go."""
    calls.fail_node(node_id, Unavailable(why))
    reassembler.drop_where(lambda key: key[0] == node_id)


class Timers:
    """The periodic work of one data plane (see the module docstring)."""

    def __init__(self, config: DataPlaneConfig, clock: Callable[[], float], peers: PeerSet, outbound: Outbound,
                 calls: PendingCalls, reassembler: Reassembler, receiver: Receiver,
                 metrics: dict[int, ChannelMetrics]) -> None:
        self.config = config
        self.clock = clock
        self.peers = peers
        self.outbound = outbound
        self.calls = calls
        self.reassembler = reassembler
        self.receiver = receiver
        self.metrics = metrics

    async def run(self) -> None:
        """Tick until cancelled."""
        cfg = self.config
        tick = min(cfg.heartbeat_interval, cfg.retransmit_after) / 2
        last_heartbeat = 0.0
        while True:
            await asyncio.sleep(tick)
            now = self.clock()
            if now - last_heartbeat >= cfg.heartbeat_interval:
                last_heartbeat = now
                self.outbound.heartbeat()
            self._detect(now)
            self.reassembler.expire(now)
            self.outbound.retransmit(now)
            for ch in wire.CHANNELS:
                self.metrics[ch].queue_depth.set(self.outbound.queue_depth(ch))
            publish_metrics()
            # Safety net for a missed FD edge (the reader callback normally does all the work).
            self.receiver.on_readable()

    def _detect(self, now: float) -> None:
        for node_id, state in self.peers.detector.evaluate(now):
            peer = self.peers.get(node_id)
            if state is PeerState.DOWN and peer is not None:
                peer.down = True
                log.warning("peer %s is down (silent for %.1fs)", node_id, self.config.down_after)
                fail_node(self.calls, self.reassembler, node_id, f"node {node_id} is not responding")
            elif state is PeerState.SUSPECT:
                log.info("peer %s is suspect", node_id)
