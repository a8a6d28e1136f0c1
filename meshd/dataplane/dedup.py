"""Receiver-side deduplication for acknowledged delivery: a bounded window of seen message ids.

The window remembers the last ``capacity`` keys (sending node, message id);
older keys are forgotten first-in first-out. A retransmission arriving after
its key left the window would be delivered twice, so the sender's retransmit
horizon must stay well inside the window (the defaults: 65,536 ids against a
sender that keeps at most 8,192 unacknowledged messages per peer and channel).
Pure logic.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable


class DedupWindow:
    """Remembers the last ``capacity`` keys; :meth:`check_and_add` says whether a key is new."""

    def __init__(self, capacity: int = 65536) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._seen: set[Hashable] = set()
        self._order: deque[Hashable] = deque()
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._seen

    def check_and_add(self, key: Hashable) -> bool:
        """True (and remember it) when ``key`` is new; False for a duplicate within the window."""
        if key in self._seen:
            self.duplicates += 1
            return False
        self._seen.add(key)
        self._order.append(key)
        if len(self._order) > self.capacity:
            self._seen.discard(self._order.popleft())
        return True
