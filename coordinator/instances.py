"""One running mechanism instance (auction, negotiation, vote or market) and its stored records.

Pure: no I/O. :class:`Instance` holds the mechanism, its metadata and the
idempotency table; :func:`rebuild` turns the keys read from etcd back into an
instance by replaying its accepted events. Records are JSON, written by the
engine (see :mod:`coordinator.keys`). Nothing here knows a kind: family,
deadlines and the status view come from the mechanism class.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from coordinator.mechanisms import Mechanism
from coordinator.mechanisms.base import registered_mechanisms


@dataclass(frozen=True, slots=True)
class Ack:
    """What a submit answers (and answers again, marked duplicate, for a retried client event id)."""

    seq: int
    actions: list[dict[str, Any]]
    state: str
    now: int

    def actions_json(self) -> str:
        """The actions as JSON text (what a submit answers in ``actions_json``)."""
        return json.dumps(self.actions) if self.actions else "[]"

    def to_json(self) -> bytes:
        """The stored form (the idempotency record)."""
        return json.dumps({"seq": self.seq, "actions": self.actions, "state": self.state, "now": self.now}).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Ack:
        """Parse the stored form."""
        data = json.loads(raw)
        return cls(int(data["seq"]), list(data["actions"]), str(data["state"]), int(data["now"]))


@dataclass
class Instance:
    """A mechanism instance in the active coordinator's memory."""

    meta: dict[str, Any]
    mechanism: Mechanism[Any, Any]
    seq: int = 0
    state: str = "open"
    end: dict[str, Any] | None = None
    #: client event id -> (ack, durability future or None when durable); a loaded ack stays its stored
    #: bytes until a retry asks for it (cProfile of Engine.load over 18k sealed bids: parsing every
    #: ack was ~0.19 s of ~1 s, which the bench's failover_s pays).
    acks: dict[str, tuple[Ack | bytes, asyncio.Future[int] | None]] = field(default_factory=dict)
    mechanism_tick: int | None = None

    @property
    def id(self) -> str:
        """The instance id."""
        return str(self.meta["id"])

    @property
    def tenant(self) -> str:
        """The owning tenant."""
        return str(self.meta["tenant"])

    @property
    def kind(self) -> str:
        """The mechanism kind."""
        return str(self.meta["kind"])

    @property
    def family(self) -> str:
        """auction, negotiation, vote or market (the mechanism class's family)."""
        return self.mechanism.family

    @property
    def escrow(self) -> bool:
        """Whether bids and buy orders hold ledger funds."""
        return bool(self.meta.get("escrow"))

    def config_deadlines(self) -> list[int]:
        """Absolute times named in the config (the kind's ``deadline_fields``) at which a tick may be due."""
        config = self.meta["config"]
        return sorted({int(config[name]) for name in self.mechanism.deadline_fields
                       if isinstance(config.get(name), int)})

    def status(self, now: int) -> dict[str, Any]:
        """The event count and the kind's live view (``Mechanism.status_view``; sealed bids stay sealed)."""
        return {"events": self.seq, **self.mechanism.status_view(now)}


def new_meta(instance_id: str, tenant: str, kind: str, config: dict[str, Any], created_at: int, escrow: bool,
             seller: str, bind_variable: str, bind_field: str) -> dict[str, Any]:
    """The metadata record of a new instance."""
    return {"id": instance_id, "tenant": tenant, "kind": kind, "config": config, "created_at": created_at,
            "escrow": escrow, "seller": seller, "bind_variable": bind_variable, "bind_field": bind_field}


def rebuild(meta: dict[str, Any], events: list[dict[str, Any]], acks: dict[str, Ack | bytes],
            end: dict[str, Any] | None) -> Instance:
    """An instance rebuilt from its stored records by replaying its accepted events in seq order."""
    cls = registered_mechanisms().get(meta["kind"])
    if cls is None:
        # Every coordinator node must load the same mechanism plugins (docs/mechanisms/README.md).
        raise ValueError(f"instance {meta['id']}: kind {meta['kind']!r} is not loaded on this coordinator "
                         "(add its module with --mechanism-module or install its plugin)")
    records = [{"now": e["now"], "event": e["event"]} for e in events]
    mechanism = cls.replay(meta["config"], records)
    instance = Instance(meta=meta, mechanism=mechanism, seq=len(events),
                        acks={cid: (ack, None) for cid, ack in acks.items()})
    if end is not None:
        instance.end = end
        instance.state = str(end["state"])
    elif mechanism.concluded:
        instance.state = "concluded"
    return instance


def check_sequence(instance_id: str, seqs: list[int]) -> None:
    """Raise ValueError unless the stored event seqs are exactly 1..n (a gap means lost data)."""
    if seqs != list(range(1, len(seqs) + 1)):
        raise ValueError(f"instance {instance_id}: event log is not contiguous: {seqs[:5]}...")
