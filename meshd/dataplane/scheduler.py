"""Receive-side fairness: strict priority between channels, with a per-round budget.

The receiver drains the highest-priority ready channel first, but each channel
may take at most its quantum (in envelopes) per round; when every ready channel
has spent its quantum a new round starts. Under a flood of ``high`` traffic a
ready ``bulk`` channel therefore still gets ``quantum[bulk]`` envelopes per
round, i.e. a share of ``quantum[bulk] / (quantum[high] + quantum[bulk])``,
while ``control`` and ``high`` still overtake it within a round.
Pure logic: no sockets, no clock.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

#: Default quanta per channel value (control, high, normal, bulk), in envelopes per round.
#: Bulk chunks are 1 MiB, so a bulk quantum of 2 bounds a round's bulk work to ~2 MiB of copying.
DEFAULT_QUANTA: dict[int, int] = {1: 256, 2: 128, 3: 64, 4: 2}


class FairScheduler:
    """Chooses which channel to drain next; channels are ints, lower value = higher priority."""

    def __init__(self, quanta: Mapping[int, int] | None = None) -> None:
        self._quanta = dict(DEFAULT_QUANTA if quanta is None else quanta)
        if any(q <= 0 for q in self._quanta.values()):
            raise ValueError("every quantum must be positive")
        self._order = sorted(self._quanta)
        self._credit = dict(self._quanta)
        self.rounds = 0

    def quantum(self, channel: int) -> int:
        """The configured quantum of a channel."""
        return self._quanta[channel]

    def credit(self, channel: int) -> int:
        """What the channel may still take in this round."""
        return self._credit[channel]

    def next_channel(self, ready: Collection[int]) -> int | None:
        """The highest-priority ready channel with credit left; starts a new round if none has any."""
        if not ready:
            return None
        for channel in self._order:
            if channel in ready and self._credit[channel] > 0:
                return channel
        self._credit = dict(self._quanta)
        self.rounds += 1
        for channel in self._order:
            if channel in ready:
                return channel
        return None

    def consumed(self, channel: int, units: int) -> None:
        """Record that ``units`` envelopes were taken from ``channel``."""
        self._credit[channel] -= units
