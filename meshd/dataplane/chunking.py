"""Chunking of large messages on ``bulk`` and their reassembly. Pure logic, clock injected.

A payload above the chunk size is sent as ``ceil(size / chunk_size)`` envelopes
flagged ``ENVELOPE_FLAG_CHUNK`` that share the message id and carry
``chunk_index``, ``chunk_count`` and ``total_size``. The receiver keeps partial
messages keyed by (sending node, message id), bounded in total bytes and age,
and hands the payload on when the last chunk arrives. Chunks of one message
travel in order on one socket, so reassembly expects them in order and drops
the message on any gap (a lost chunk means the whole message is lost, which
keeps at-most-once delivery).
"""

from __future__ import annotations

import mmap
import sys
from collections.abc import Hashable
from dataclasses import dataclass

_MIB = 1 << 20


class BufferPool:
    """Reusable anonymous mmaps for reassembly, handed out again once nothing references them.

    bench/hol.py (continuous 64 MiB bulk): copying a 1 MiB chunk into a *fresh* anonymous mmap
    cost ~730 µs (page faults and kernel zeroing) and unmapping a 64 MiB buffer ~11-16 ms, all
    on the receive loop; into an already-touched buffer the copy is ~75 µs and nothing is
    unmapped. A buffer is reused only when the pool holds the last reference to it (the
    memoryview given to the handler, and any zero-copy forward of it, keep the mmap alive
    and referenced), so a consumer never sees its payload change. At most ``max_bytes`` are
    kept; beyond that buffers are plain one-shot mmaps freed with their last view.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buffers: list[mmap.mmap] = []
        self._bytes = 0
        self.reused = 0

    @property
    def bytes_held(self) -> int:
        """Bytes of mmaps the pool keeps (free or in use)."""
        return self._bytes

    def acquire(self, size: int) -> mmap.mmap:
        """A buffer of at least ``size`` bytes that nobody else references."""
        size = max(size, 1)
        best: mmap.mmap | None = None
        for buf in self._buffers:
            # References: the pool's list, the loop variable and getrefcount's argument. Anything
            # more is a live memoryview (or a zero-copy frame) over the buffer.
            if len(buf) >= size and sys.getrefcount(buf) <= 3 and (best is None or len(buf) < len(best)):
                best = buf
        if best is not None:
            self.reused += 1
            return best
        # Round up so messages of slightly different sizes share buffers.
        rounded = (size + _MIB - 1) // _MIB * _MIB if size > _MIB else size
        buf = mmap.mmap(-1, rounded)
        if self._bytes + rounded <= self.max_bytes:
            self._buffers.append(buf)
            self._bytes += rounded
        return buf

    def clear(self) -> None:
        """Forget every pooled buffer (they are freed with their last view)."""
        self._buffers.clear()
        self._bytes = 0


def split_payload(payload: bytes | memoryview, chunk_size: int) -> list[memoryview]:
    """Zero-copy slices of ``payload`` of at most ``chunk_size`` bytes (one slice for an empty payload)."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    view = memoryview(payload)
    if len(view) == 0:
        return [view]
    return [view[i:i + chunk_size] for i in range(0, len(view), chunk_size)]


@dataclass
class _Partial:
    count: int
    total: int
    started: float
    buffer: mmap.mmap | None = None
    received: int = 0
    size: int = 0


class Reassembler:
    """Collects chunks into whole payloads, bounded by ``max_bytes`` in flight and ``timeout`` seconds."""

    def __init__(self, max_message: int, max_bytes: int, timeout: float, pool_bytes: int = 0) -> None:
        self.max_message = max_message
        self.pool = BufferPool(pool_bytes)
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._partials: dict[Hashable, _Partial] = {}
        self._bytes = 0
        self.dropped = 0

    @property
    def bytes_pending(self) -> int:
        """Bytes held in partial messages."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._partials)

    def add(self, key: Hashable, index: int, count: int, total: int, data: bytes | memoryview, now: float
            ) -> memoryview | None:
        """Add one chunk; returns the whole payload (a memoryview over an mmap) when complete, else None.

        Inconsistent chunks (wrong order, size, count, or over a limit) drop the
        partial message and raise ``ValueError`` naming why.
        """
        partial = self._partials.get(key)
        if partial is not None and index == 0:
            # A retransmission (acknowledged mode) restarts the message from its first chunk.
            self._bytes -= partial.total
            del self._partials[key]
            partial = None
        if partial is None:
            if index != 0:
                self.dropped += 1
                raise ValueError("chunk_gap")
            if count < 1 or total > self.max_message:
                self.dropped += 1
                raise ValueError("chunk_bad")
            if self._bytes + total > self.max_bytes:
                self.dropped += 1
                raise ValueError("chunk_memory")
            # Anonymous mmap: neither the allocation (bytearray(64 MiB) memsets ~15 ms) nor the completion
            # (a join copies ~10 ms) stalls the receive loop; pooled, so pages are touched once (bench/hol.py).
            partial = _Partial(count=count, total=total, started=now, buffer=self.pool.acquire(total))
            self._partials[key] = partial
            self._bytes += total
        elif index != partial.received or count != partial.count or total != partial.total:
            self._drop(key)
            raise ValueError("chunk_gap")
        end = partial.size + len(data)
        if end > partial.total:
            self._drop(key)
            raise ValueError("chunk_bad")
        # Copy each chunk into place as it arrives: no large join when the last one lands
        # (a 64 MiB join would stall the receive loop for ~10 ms; bench/hol.py).
        assert partial.buffer is not None
        partial.buffer[partial.size:end] = data
        partial.size = end
        partial.received += 1
        if partial.received < partial.count:
            return None
        del self._partials[key]
        self._bytes -= partial.total
        if partial.size != partial.total:
            self.dropped += 1
            raise ValueError("chunk_bad")
        return memoryview(partial.buffer)[:total]

    def _drop(self, key: Hashable) -> None:
        partial = self._partials.pop(key, None)
        if partial is not None:
            self._bytes -= partial.total
            self.dropped += 1

    def expire(self, now: float) -> int:
        """Drop partial messages older than the timeout; returns how many."""
        old = [key for key, p in self._partials.items() if now - p.started > self.timeout]
        for key in old:
            self._drop(key)
        return len(old)

    def drop_where(self, predicate: object) -> int:
        """Drop partials whose key satisfies ``predicate`` (e.g. all from a node that went down)."""
        assert callable(predicate)
        keys = [key for key in self._partials if predicate(key)]
        for key in keys:
            self._drop(key)
        return len(keys)
