"""The hash chain of a run's event log (pure): how each event's hash is made, and how a log is verified.

Every event of a run carries ``hash = sha256(run_id, seq, type, version, sha256(payload), prev_hash)``,
where the six values are encoded as a compact JSON array (so the encoding is unambiguous and any
language can recompute it) and ``prev_hash`` is the previous event's hash (:data:`GENESIS` for seq 1).
The payload enters only through its own digest, so retention can drop an old payload and keep the
chain verifiable. agentd writes the chain (``agentd.runs``); ``meshctl run verify`` and the SDK
recompute it from a raw stream (:func:`verify`) and name the first event that does not match.

Shared by the daemon and the SDK, which is why it lives in ``mabeam``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

#: The prev_hash of a run's first event.
GENESIS = "0" * 64
#: Compact JSON, built once: json.dumps with non-default separators builds an encoder per call
#: (a fifth of an append's planning time in ``python -m bench runs``).
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
#: Strings JSON writes as they are (ids, types and hex digests are; anything else goes through the encoder).
_PLAIN = re.compile(r"[A-Za-z0-9_.:@/ -]*").fullmatch


def payload_digest(payload: str) -> str:
    """Hex sha256 of a payload's stored JSON text (UTF-8)."""
    return hashlib.sha256(payload.encode()).hexdigest()


def _material(run_id: str, seq: int, type_: str, version: int, payload_sha256: str, prev_hash: str,
              plain: bool) -> bytes:
    """The bytes an event's hash is taken of (the one definition of the chain's format); ``plain`` when the
    four strings need no JSON escaping (the caller checked)."""
    if plain:
        # What json.dumps writes for strings that need no escaping, without the encoder's per-call cost.
        return f'["{run_id}",{int(seq)},"{type_}",{int(version)},"{payload_sha256}","{prev_hash}"]'.encode()
    return _ENCODE([run_id, seq, type_, version, payload_sha256, prev_hash]).encode()


def event_hash(run_id: str, seq: int, type_: str, version: int, payload_sha256: str, prev_hash: str) -> str:
    """The hash of one event, chaining it to ``prev_hash``."""
    plain = bool(_PLAIN(run_id) and _PLAIN(type_) and _PLAIN(payload_sha256) and _PLAIN(prev_hash))
    return hashlib.sha256(_material(run_id, seq, type_, version, payload_sha256, prev_hash, plain)).hexdigest()


class Linkable(Protocol):
    """What :func:`chain_hashes` reads of an event to append."""

    @property
    def type(self) -> str:
        """The event's type."""

    @property
    def version(self) -> int:
        """The event's schema version."""

    @property
    def payload(self) -> str:
        """The payload's JSON text."""


def chain_hashes(run_id: str, last_seq: int, last_hash: str, events: Sequence[Linkable]) -> list[tuple[str, str]]:
    """Chain ``events`` after event ``last_seq`` (hash ``last_hash``): each one's (payload_sha256, hash).

    The same hashes as :func:`payload_digest` and :func:`event_hash` one by one, for a batch: the run id
    and the chain's start are checked once, a digest is hex by construction, and one event type is
    checked once per batch (an executor's append of 16 events spent a tenth of its time in these
    checks, ``python -m bench runs``).
    """
    out: list[tuple[str, str]] = []
    plain = _PLAIN(run_id) is not None and _PLAIN(last_hash) is not None
    plain_types: dict[str, bool] = {}
    seq = last_seq
    prev = last_hash
    sha256 = hashlib.sha256
    for event in events:
        seq += 1
        type_ = event.type
        digest = sha256(event.payload.encode()).hexdigest()
        fast = plain and plain_types.get(type_)
        if fast is None:
            fast = plain_types[type_] = _PLAIN(type_) is not None
        prev = sha256(_material(run_id, seq, type_, event.version, digest, prev, fast)).hexdigest()
        out.append((digest, prev))
    return out


@dataclass(frozen=True, slots=True)
class Link:
    """One event as verification reads it (a raw event: stored version and payload)."""

    seq: int
    type: str
    version: int
    payload: str | None  # None when retention pruned it
    payload_sha256: str
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of :func:`verify`: ``first_bad_seq`` is 0 when the chain holds."""

    ok: bool
    checked: int
    first_bad_seq: int = 0
    problem: str = ""
    last_hash: str = ""


def verify(run_id: str, links: Iterable[Link], first_seq: int = 1, start_prev_hash: str | None = None) -> Verdict:
    """Recompute the chain over ``links`` (in seq order from ``first_seq``) and name the first bad event.

    ``start_prev_hash`` is the prev_hash expected of the first link: :data:`GENESIS` from seq 1; after
    retention compacted the log, the run's stored floor hash (None trusts the first link's own).
    """
    expected_seq = first_seq
    prev = GENESIS if start_prev_hash is None and first_seq == 1 else start_prev_hash
    checked = 0
    for link in links:
        problem = ""
        if link.seq != expected_seq:
            problem = f"expected seq {expected_seq}, found {link.seq} (a gap or a reordering)"
        elif prev is not None and link.prev_hash != prev:
            problem = "prev_hash does not match the previous event's hash"
        elif link.payload is not None and payload_digest(link.payload) != link.payload_sha256:
            problem = "the payload does not match its recorded sha256"
        if problem:
            return Verdict(False, checked, link.seq, problem, prev or "")
        recomputed = event_hash(run_id, link.seq, link.type, link.version, link.payload_sha256, link.prev_hash)
        if recomputed != link.hash:
            return Verdict(False, checked, link.seq, "the hash does not match the event's fields", prev or "")
        prev = link.hash
        expected_seq += 1
        checked += 1
    return Verdict(True, checked, last_hash=prev or "")
