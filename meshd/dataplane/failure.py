"""Failure detection from heartbeats: a pure state machine with an injected clock.

Every peer sends a heartbeat on ``control`` every ``interval`` seconds; any
envelope from a peer counts as hearing from it. A peer not heard from for
``suspect_after`` seconds is SUSPECT, for ``down_after`` seconds DOWN: the data
plane then fails its pending calls with UNAVAILABLE. Hearing from it again
makes it ALIVE. etcd membership stays the authority for join and leave: this
detector only tracks peers the membership watch reported (``add``/``remove``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class PeerState(enum.Enum):
    """Liveness of a peer as the detector sees it."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DOWN = "down"


@dataclass
class _Peer:
    last_heard: float
    state: PeerState = PeerState.ALIVE


class FailureDetector:
    """Tracks when each peer was last heard from; :meth:`evaluate` yields state transitions."""

    def __init__(self, suspect_after: float = 0.6, down_after: float = 1.2) -> None:
        if not 0 < suspect_after <= down_after:
            raise ValueError("need 0 < suspect_after <= down_after")
        self.suspect_after = suspect_after
        self.down_after = down_after
        self._peers: dict[str, _Peer] = {}

    def add(self, node_id: str, now: float) -> None:
        """Start tracking a peer (it counts as heard from now)."""
        self._peers[node_id] = _Peer(last_heard=now)

    def remove(self, node_id: str) -> None:
        """Stop tracking a peer."""
        self._peers.pop(node_id, None)

    def state(self, node_id: str) -> PeerState | None:
        """The peer's current state, None when not tracked."""
        peer = self._peers.get(node_id)
        return None if peer is None else peer.state

    def heard(self, node_id: str, now: float) -> PeerState | None:
        """Record a sign of life; returns the previous state if it changed (to ALIVE), else None."""
        peer = self._peers.get(node_id)
        if peer is None:
            return None
        peer.last_heard = now
        if peer.state is not PeerState.ALIVE:
            previous = peer.state
            peer.state = PeerState.ALIVE
            return previous
        return None

    def evaluate(self, now: float) -> list[tuple[str, PeerState]]:
        """Advance every peer's state for ``now``; returns (node, new state) for each change."""
        changes: list[tuple[str, PeerState]] = []
        for node_id, peer in self._peers.items():
            silent = now - peer.last_heard
            if silent >= self.down_after:
                new = PeerState.DOWN
            elif silent >= self.suspect_after:
                new = PeerState.SUSPECT
            else:
                new = PeerState.ALIVE
            if new is not peer.state:
                peer.state = new
                changes.append((node_id, new))
        return changes
