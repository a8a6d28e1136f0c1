"""Retention (pure): which event payloads to drop and where a run's retention floor moves.

Two rules, both bounded by what a resume needs (the pending frames and the frame
being handled, which are replayed from the log):

- **per event class**: a payload older than its class's TTL is dropped; the event
  keeps its seq, type and hashes, so streams stay gap-free and the chain verifies
  (classes are glob patterns on the type, e.g. ``"model.delta*"``);
- **history**: events older than ``history_ttl_s`` and at or below the latest
  checkpoint (whose state replaces them) are removed; the **retention floor** is
  the lowest seq still stored, and a stream cursor below ``floor - 1`` is stale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from agentd.runs.model import StaleCursor


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """``payload_ttl_s``: glob on the event type → seconds a payload is kept; ``history_ttl_s``: seconds
    events below the latest checkpoint are kept (None: forever)."""

    payload_ttl_s: Mapping[str, float] = field(default_factory=dict)
    history_ttl_s: float | None = None

    def payload_ttl(self, type_: str) -> float | None:
        """The TTL of this type's payloads (the first matching pattern), or None to keep them."""
        for pattern, ttl in self.payload_ttl_s.items():
            if fnmatchcase(type_, pattern):
                return ttl
        return None


@dataclass(frozen=True, slots=True)
class EventMeta:
    """What retention needs to know of one event. ``frame_seq``: for frame.started/handled, the frame's seq."""

    seq: int
    type: str
    time_ms: int
    pruned: bool = False
    frame_seq: int = 0


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    """Events below ``floor`` are deleted; ``prune`` lists the seqs whose payload is dropped."""

    floor: int
    prune: tuple[int, ...] = ()


def needed_from(events: Sequence[EventMeta]) -> int:
    """The lowest seq a resume reads: the first pending frame, or the frame being handled (0: none)."""
    pending: set[int] = set()
    started: dict[int, int] = {}
    for meta in events:
        if meta.type == "frame.received":
            pending.add(meta.seq)
        elif meta.type == "frame.started":
            started[meta.frame_seq] = meta.seq
        elif meta.type == "frame.handled":
            pending.discard(meta.frame_seq)
            started.pop(meta.frame_seq, None)
    candidates = [*pending, *started.values()]
    return min(candidates) if candidates else 0


def plan_retention(events: Sequence[EventMeta], floor: int, checkpoint_seq: int, last_seq: int, now_ms: int,
                   policy: RetentionPolicy) -> RetentionPlan:
    """Decide the new floor and the payloads to drop for one run (``events`` in seq order, from ``floor``)."""
    keep_from = needed_from(events) or last_seq + 1
    new_floor = floor
    if policy.history_ttl_s is not None and checkpoint_seq:
        horizon = now_ms - int(policy.history_ttl_s * 1000)
        limit = min(checkpoint_seq, keep_from - 1)  # never past the checkpoint or what a resume reads
        for meta in events:
            if meta.seq > limit or meta.time_ms > horizon:
                break
            new_floor = meta.seq + 1
    prune = []
    for meta in events:
        if meta.seq < new_floor or meta.pruned or meta.seq >= keep_from:
            continue
        ttl = policy.payload_ttl(meta.type)
        if ttl is not None and meta.time_ms <= now_ms - int(ttl * 1000):
            prune.append(meta.seq)
    return RetentionPlan(new_floor, tuple(prune))


def check_cursor(cursor: int, floor: int) -> None:
    """Raise StaleCursor when a stream from ``cursor + 1`` would start below the floor."""
    if cursor < 0:
        raise ValueError("cursor must be >= 0")
    if cursor + 1 < floor:
        raise StaleCursor(cursor, floor)
