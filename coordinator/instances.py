"""One running mechanism instance (auction, negotiation, vote or market) and its stored records.

Pure: no I/O. :class:`Instance` holds the mechanism, its metadata, the
idempotency table and the escrow order book; :func:`rebuild` turns the keys
read from etcd back into an instance by replaying its accepted events.
Records are JSON, written by the engine (see :mod:`coordinator.keys`).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from coordinator.escrow import OrderInfo, orders_from_events
from coordinator.mechanisms import Mechanism
from coordinator.mechanisms.base import mechanism_class

FAMILIES: dict[str, str] = {
    "sealed": "auction", "english": "auction", "dutch": "auction", "multi_unit": "auction",
    "combinatorial": "auction", "contract_net": "negotiation", "alternating_offers": "negotiation",
    "mediated_bargaining": "negotiation", "vote": "vote", "double_auction": "market", "call_market": "market",
}
#: Config fields that name an absolute time at which a tick may be due.
DEADLINE_FIELDS = ("opens_at", "closes_at", "hard_deadline", "deadline", "starts_at")


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
    orders: dict[str, OrderInfo] = field(default_factory=dict)
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
        """auction, negotiation, vote or market."""
        return FAMILIES[self.kind]

    @property
    def escrow(self) -> bool:
        """Whether bids and buy orders hold ledger funds."""
        return bool(self.meta.get("escrow"))

    def config_deadlines(self) -> list[int]:
        """Absolute times named in the config at which a tick may be due."""
        config = self.meta["config"]
        return sorted({int(config[name]) for name in DEADLINE_FIELDS if isinstance(config.get(name), int)})

    def status(self, now: int) -> dict[str, Any]:
        """A kind-specific live view (sealed bids stay sealed)."""
        mech: Any = self.mechanism
        view: dict[str, Any] = {"events": self.seq}
        if self.kind == "english":
            bidder, amount = mech.standing()
            view.update(high_bidder=bidder, high_bid=amount, closes_at=mech.closes_at(),
                        minimum_bid=mech.minimum_bid())
        elif self.kind == "dutch":
            view.update(price=mech.price_at(now), expires_at=mech.expires_at())
        elif self.family == "market":
            resting = mech.resting()
            buys = [o.price for o in resting if o.side == "buy"]
            sells = [o.price for o in resting if o.side == "sell"]
            view.update(best_bid=max(buys, default=None), best_ask=min(sells, default=None),
                        resting_orders=len(resting))
        return view


def new_meta(instance_id: str, tenant: str, kind: str, config: dict[str, Any], created_at: int, escrow: bool,
             seller: str, bind_variable: str, bind_field: str) -> dict[str, Any]:
    """The metadata record of a new instance."""
    return {"id": instance_id, "tenant": tenant, "kind": kind, "config": config, "created_at": created_at,
            "escrow": escrow, "seller": seller, "bind_variable": bind_variable, "bind_field": bind_field}


def rebuild(meta: dict[str, Any], events: list[dict[str, Any]], acks: dict[str, Ack | bytes],
            end: dict[str, Any] | None) -> Instance:
    """An instance rebuilt from its stored records by replaying its accepted events in seq order."""
    cls = mechanism_class(meta["kind"])
    records = [{"now": e["now"], "event": e["event"]} for e in events]
    mechanism = cls.replay(meta["config"], records)
    instance = Instance(meta=meta, mechanism=mechanism, seq=len(events),
                        acks={cid: (ack, None) for cid, ack in acks.items()})
    if end is not None:
        instance.end = end
        instance.state = str(end["state"])
    elif mechanism.concluded:
        instance.state = "concluded"
    if FAMILIES[meta["kind"]] == "market":
        instance.orders = orders_from_events(records)
    return instance


def check_sequence(instance_id: str, seqs: list[int]) -> None:
    """Raise ValueError unless the stored event seqs are exactly 1..n (a gap means lost data)."""
    if seqs != list(range(1, len(seqs) + 1)):
        raise ValueError(f"instance {instance_id}: event log is not contiguous: {seqs[:5]}...")
