"""Escrow rules per mechanism kind, as pure functions over events, actions and outcomes.

An instance created with ``escrow=true`` makes every bidder (or buyer) hold
what they could have to pay, before their event is accepted:

* ``sealed``: the bid; ``english``: the bidder's highest bid; ``multi_unit``:
  the sum of the marginal bids; ``combinatorial``: the largest bundle amount
  (XOR bids win at most one bundle); ``dutch``: the clock price on accept.
* markets (``double_auction``, ``call_market``): a buy limit order holds
  ``price × quantity``; each trade pays ``trade price × quantity`` out of the
  order's hold (the rest of that slice returns to the buyer) and credits the
  seller; a cancelled remainder returns. Market (unpriced) buy orders are
  refused under escrow because nothing bounds what they could spend.
* On conclusion the winners pay their price out of their hold (credited to the
  instance's seller, if any) and every other hold is released; cancellation
  releases everything.

No price ever exceeds the bid it came from (the mechanisms guarantee it), so a
settlement never needs more than the hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

AUCTION_HOLD_KINDS = frozenset({"sealed", "english", "dutch", "multi_unit", "combinatorial"})
MARKET_KINDS = frozenset({"double_auction", "call_market"})
PARTICIPANT_FIELDS = ("bidder", "trader", "voter", "contractor", "party")


class EscrowRefused(Exception):
    """The event cannot be accepted under escrow (e.g. an unpriced buy order)."""


def participant(event: Mapping[str, Any]) -> str | None:
    """The agent an event comes from (its bidder, trader, voter, contractor or party field)."""
    for field in PARTICIPANT_FIELDS:
        value = event.get(field)
        if isinstance(value, str):
            return value
    return None


def required_hold(kind: str, event: Mapping[str, Any], current: int, clock_price: int | None = None) -> int | None:
    """The participant's hold after ``event`` is accepted, or None when the event holds nothing.

    ``current`` is what the participant holds in this instance now;
    ``clock_price`` is the Dutch clock price at the event's time.
    """
    etype = event.get("type")
    if kind == "sealed" and etype == "bid":
        return int(event["amount"])
    if kind == "english" and etype == "bid":
        return max(current, int(event["amount"]))
    if kind == "multi_unit" and etype == "bid":
        return sum(int(x) for x in event["marginal"])
    if kind == "combinatorial" and etype == "bundle_bid":
        return max(int(b["amount"]) for b in event["bundles"])
    if kind == "dutch" and etype == "accept":
        return clock_price if clock_price is not None else current
    if kind in MARKET_KINDS and event.get("side") == "buy":
        if etype == "market":
            raise EscrowRefused("market (unpriced) buy orders are not accepted on an escrow market; "
                                "send a limit order")
        if etype == "limit":
            return current + int(event["price"]) * int(event["quantity"])
    return None


@dataclass(frozen=True, slots=True)
class Payment:
    """A winner pays ``price`` out of their hold."""

    agent: str
    price: int


def settlement(kind: str, outcome: Mapping[str, Any]) -> list[Payment]:
    """Who pays what when an auction concludes (empty for kinds that do not settle at the end)."""
    if kind in ("sealed", "english", "dutch"):
        winner = outcome.get("winner")
        return [Payment(winner, int(outcome["price"]))] if winner is not None else []
    if kind in ("multi_unit", "combinatorial"):
        return [Payment(award["bidder"], int(award["payment"])) for award in outcome.get("awards", [])]
    return []


@dataclass(frozen=True, slots=True)
class OrderInfo:
    """What a market order holds per unit (its limit price) and who placed it."""

    trader: str
    side: str
    price: int


def orders_from_events(events: list[Mapping[str, Any]]) -> dict[str, OrderInfo]:
    """The limit orders of a market's accepted events, by order id (rebuilt on takeover)."""
    orders: dict[str, OrderInfo] = {}
    for record in events:
        event = record["event"]
        if event.get("type") == "limit":
            orders[event["order_id"]] = OrderInfo(event["trader"], event["side"], int(event["price"]))
    return orders


@dataclass(frozen=True, slots=True)
class HoldChange:
    """One step of market settlement: consume ``used`` of ``agent``'s hold, paying ``price`` to ``payee``."""

    agent: str
    used: int
    price: int
    payee: str | None


def market_changes(actions: list[Mapping[str, Any]], orders: Mapping[str, OrderInfo]) -> list[HoldChange]:
    """The hold changes a market's trade and order-done actions imply (buy side only)."""
    changes: list[HoldChange] = []
    for action in actions:
        if action.get("type") == "trade":
            info = orders.get(action["buy_order"])
            if info is not None:
                qty = int(action["quantity"])
                changes.append(HoldChange(info.trader, info.price * qty, int(action["price"]) * qty,
                                          action["seller"]))
        elif action.get("type") == "order_done" and action.get("reason") == "cancelled":
            info = orders.get(action["order_id"])
            if info is not None and info.side == "buy":
                changes.append(HoldChange(info.trader, info.price * int(action["remaining"]), 0, None))
    return changes
