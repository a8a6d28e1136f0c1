"""Markets: a continuous double auction (an order book) and a periodic call market.

Both trade one instrument in whole units at integer prices; a trade of ``q``
units at price ``p`` moves ``q`` units from seller to buyer and ``q·p``
credits from buyer to seller.

Continuous double auction (``DoubleAuction``)
---------------------------------------------
* Limit orders rest in the book; market orders take what they can and the
  unfilled rest is cancelled (immediate-or-cancel). Order ids are unique.
* **Price-time priority**: an incoming order matches the best opposite price
  first (lowest ask for a buy, highest bid for a sell) and, at one price, the
  earliest resting order first. Orders fill partially.
* **Trades execute at the resting order's price**, so an incoming limit order
  never trades at a price worse than its limit: no trade executes outside the
  crossing prices ``bid >= price >= ask``.
* ``Cancel`` removes the rest of a resting order (only its owner may cancel).
* A :class:`Close` ends trading; the outcome lists every trade and the book.

Periodic call market (``CallMarket``)
-------------------------------------
* Limit orders accumulate; each ``Clear`` event runs one call:
  the clearing price is the candidate price (any order's limit price)
  that **maximises traded volume** ``min(demand(p), supply(p))``, where
  demand counts buy quantity with limit ``>= p`` and supply counts sell
  quantity with limit ``<= p``. **Tie rule**: among prices with the same
  volume, the smallest imbalance ``|demand − supply|``, then the lowest price.
* At the clearing price, buys are filled by price then time priority (highest
  limit first) and sells likewise (lowest limit first); all trades in a call
  execute at the single clearing price. Unfilled remainders stay for the next
  call unless cancelled. ``Close`` ends the market.

Escrow (both kinds, :class:`MarketMechanism`)
---------------------------------------------
A buy limit order holds ``price × quantity``; each trade pays ``trade price ×
quantity`` out of the buy order's hold (the rest of that slice returns to the
buyer) and credits the seller; a cancelled remainder returns. Market (unpriced)
buy orders are refused under escrow because nothing bounds what they could spend.
"""

from __future__ import annotations

from abc import abstractmethod
from bisect import insort
from collections import deque
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import Field

from coordinator.mechanisms.base import (
    Action,
    Close,
    HoldChange,
    Ident,
    Mechanism,
    Model,
    PositiveAmount,
)
from coordinator.mechanisms.errors import EscrowRefused, InvalidEvent

Side = Literal["buy", "sell"]


class MarketConfig(Model):
    """A market's participants (None admits anyone)."""

    traders: list[Ident] | None = None


class LimitOrder(Model):
    """Buy or sell up to ``quantity`` units at ``price`` or better."""

    type: Literal["limit"] = "limit"
    order_id: Ident
    trader: Ident
    side: Side
    price: PositiveAmount
    quantity: PositiveAmount


class MarketOrder(Model):
    """Buy or sell up to ``quantity`` units at whatever the book offers; the rest is cancelled."""

    type: Literal["market"] = "market"
    order_id: Ident
    trader: Ident
    side: Side
    quantity: PositiveAmount


class Cancel(Model):
    """Withdraw the unfilled rest of a resting order."""

    type: Literal["cancel"] = "cancel"
    order_id: Ident
    trader: Ident


class Clear(Model):
    """Run one call of a call market at the current time."""

    type: Literal["clear"] = "clear"


class Trade(Action):
    """One execution: ``quantity`` units from ``seller`` to ``buyer`` at ``price`` each."""

    type: Literal["trade"] = "trade"
    buy_order: str
    sell_order: str
    buyer: str
    seller: str
    price: int
    quantity: int
    at: int


class OrderDone(Action):
    """An order left the book: fully ``filled`` or ``cancelled`` (with ``remaining`` unfilled)."""

    type: Literal["order_done"] = "order_done"
    order_id: str
    reason: Literal["filled", "cancelled"]
    remaining: int


class RestingOrder(Model):
    """An order in the book with its unfilled quantity (the model is frozen; we replace on fill)."""

    order_id: str
    trader: str
    side: Side
    price: int
    remaining: int
    seq: int


class MarketOutcome(Model):
    """Every trade in order, the call prices (call market) and the orders still resting at the close."""

    trades: list[Trade]
    clearing_prices: list[int | None]
    resting: list[RestingOrder]


class _Book:
    """Price levels per side with FIFO queues; sorted price lists so the best price is at the end."""

    def __init__(self) -> None:
        self.levels: dict[Side, dict[int, deque[RestingOrder]]] = {"buy": {}, "sell": {}}
        # Bids sorted ascending by price (best = last); asks sorted by negated price (best = last).
        self.keys: dict[Side, list[int]] = {"buy": [], "sell": []}
        self.orders: dict[str, RestingOrder] = {}

    def add(self, order: RestingOrder) -> None:
        level = self.levels[order.side].get(order.price)
        if level is None:
            level = self.levels[order.side][order.price] = deque()
            insort(self.keys[order.side], order.price if order.side == "buy" else -order.price)
        level.append(order)
        self.orders[order.order_id] = order

    def best(self, side: Side) -> int | None:
        keys = self.keys[side]
        if not keys:
            return None
        return keys[-1] if side == "buy" else -keys[-1]

    def remove(self, order: RestingOrder) -> None:
        level = self.levels[order.side][order.price]
        level.remove(self.orders.pop(order.order_id))
        if not level:
            self._drop_level(order.side, order.price)

    def _drop_level(self, side: Side, price: int) -> None:
        del self.levels[side][price]
        self.keys[side].remove(price if side == "buy" else -price)

    def all(self) -> list[RestingOrder]:
        return sorted(self.orders.values(), key=lambda order: order.seq)


def _check_order(event: LimitOrder | MarketOrder | Cancel, config: MarketConfig, known_ids: set[str],
                 resting: dict[str, RestingOrder]) -> None:
    if config.traders is not None and event.trader not in config.traders:
        raise InvalidEvent(f"unknown trader {event.trader!r}")
    if isinstance(event, Cancel):
        order = resting.get(event.order_id)
        if order is None:
            raise InvalidEvent(f"cannot cancel {event.order_id!r}: no such resting order")
        if order.trader != event.trader:
            raise InvalidEvent(f"trader {event.trader!r} cannot cancel {event.order_id!r} of {order.trader!r}")
    elif event.order_id in known_ids:
        raise InvalidEvent(f"duplicate order id {event.order_id!r}")


class MarketMechanism(Mechanism[MarketConfig, MarketOutcome]):
    """The base of every market kind: order ids, escrow per trade, the book view.

    The coordinator serves family ``market`` with ``GetBook`` (from :meth:`resting`) and
    ``WatchTrades`` (the :class:`Trade` actions, re-derived by replay), so a market kind
    subclasses this, emits :class:`Trade` and :class:`OrderDone` actions, and calls
    :meth:`_accept_order` once an order is accepted.
    """

    family = "market"
    config_type = MarketConfig
    outcome_type = MarketOutcome

    def __init__(self, config: MarketConfig | dict[str, object]) -> None:
        super().__init__(config)
        self._seen: set[str] = set()
        self._seq = 0
        self._trades: list[Trade] = []
        self._limits: dict[str, LimitOrder] = {}  # every accepted limit order: escrow settles trades at its limit

    def _accept_order(self, event: LimitOrder | MarketOrder) -> None:
        """Record an accepted order (its id is taken; a limit order's price bounds its escrow)."""
        self._seen.add(event.order_id)
        self._seq += 1
        if isinstance(event, LimitOrder):
            self._limits[event.order_id] = event

    @abstractmethod
    def resting(self) -> list[RestingOrder]:
        """Orders in the book, in arrival order."""

    def trades(self) -> list[Trade]:
        """Every trade so far, in execution order."""
        return list(self._trades)

    def status_view(self, now: int) -> dict[str, Any]:
        """The best bid and ask and how many orders rest."""
        resting = self.resting()
        buys = [o.price for o in resting if o.side == "buy"]
        sells = [o.price for o in resting if o.side == "sell"]
        return {"best_bid": max(buys, default=None), "best_ask": min(sells, default=None),
                "resting_orders": len(resting)}

    def required_hold(self, event: Model, current: int, now: int) -> int | None:
        """Escrow: a buy limit order adds ``price × quantity``; an unpriced buy order is refused."""
        if isinstance(event, MarketOrder) and event.side == "buy":
            raise EscrowRefused("market (unpriced) buy orders are not accepted on an escrow market; "
                                "send a limit order")
        if isinstance(event, LimitOrder) and event.side == "buy":
            return current + event.price * event.quantity
        return None

    def hold_changes(self, actions: Sequence[Action]) -> list[HoldChange]:
        """Escrow: each trade pays the seller out of the buy order's hold; a cancelled rest returns."""
        changes: list[HoldChange] = []
        for action in actions:
            if isinstance(action, Trade):
                order = self._limits.get(action.buy_order)
                if order is not None:
                    changes.append(HoldChange(order.trader, order.price * action.quantity,
                                              action.price * action.quantity, action.seller))
            elif isinstance(action, OrderDone) and action.reason == "cancelled":
                order = self._limits.get(action.order_id)
                if order is not None and order.side == "buy":
                    changes.append(HoldChange(order.trader, order.price * action.remaining, 0, None))
        return changes


class DoubleAuction(MarketMechanism):
    """A continuous double auction with price-time priority (see the module docstring)."""

    kind = "double_auction"
    event_type = Annotated[LimitOrder | MarketOrder | Cancel | Close, Field(discriminator="type")]

    def __init__(self, config: MarketConfig | dict[str, object]) -> None:
        super().__init__(config)
        self._book = _Book()

    def _step(self, event: LimitOrder | MarketOrder | Cancel | Close, now: int) -> list[Action]:
        if isinstance(event, Close):
            self._outcome = MarketOutcome(trades=list(self._trades), clearing_prices=[], resting=self._book.all())
            return []
        _check_order(event, self.config, self._seen, self._book.orders)
        if isinstance(event, Cancel):
            order = self._book.orders[event.order_id]
            self._book.remove(order)
            return [OrderDone(order_id=order.order_id, reason="cancelled", remaining=order.remaining)]
        # Validation is complete: from here on nothing raises, so a rejected event never half-applies.
        self._accept_order(event)
        limit = event.price if isinstance(event, LimitOrder) else None
        actions: list[Action] = []
        remaining = self._match(event, limit, now, actions)
        if remaining and isinstance(event, LimitOrder):
            self._book.add(RestingOrder(order_id=event.order_id, trader=event.trader, side=event.side,
                                        price=event.price, remaining=remaining, seq=self._seq))
        elif remaining:
            actions.append(OrderDone(order_id=event.order_id, reason="cancelled", remaining=remaining))
        else:
            actions.append(OrderDone(order_id=event.order_id, reason="filled", remaining=0))
        return actions

    def _match(self, event: LimitOrder | MarketOrder, limit: int | None, now: int, actions: list[Action]) -> int:
        book = self._book
        opposite: Side = "sell" if event.side == "buy" else "buy"
        remaining = event.quantity
        while remaining:
            price = book.best(opposite)
            if price is None:
                break
            if limit is not None and (price > limit if event.side == "buy" else price < limit):
                break
            level = book.levels[opposite][price]
            resting = level[0]
            quantity = min(remaining, resting.remaining)
            remaining -= quantity
            buy, sell = (event, resting) if event.side == "buy" else (resting, event)
            trade = Trade(buy_order=buy.order_id, sell_order=sell.order_id, buyer=buy.trader,
                          seller=sell.trader, price=price, quantity=quantity, at=now)
            self._trades.append(trade)
            actions.append(trade)
            if quantity == resting.remaining:
                level.popleft()
                del book.orders[resting.order_id]
                if not level:
                    book._drop_level(opposite, price)
                actions.append(OrderDone(order_id=resting.order_id, reason="filled", remaining=0))
            else:
                updated = resting.model_copy(update={"remaining": resting.remaining - quantity})
                level[0] = updated
                book.orders[resting.order_id] = updated
        return remaining

    def resting(self) -> list[RestingOrder]:
        """Resting orders in arrival order."""
        return self._book.all()

    def best_bid(self) -> int | None:
        """The highest resting buy price."""
        return self._book.best("buy")

    def best_ask(self) -> int | None:
        """The lowest resting sell price."""
        return self._book.best("sell")


def clearing_price(orders: list[RestingOrder]) -> tuple[int | None, int]:
    """The call-market price and volume for these orders (see the module docstring's tie rule).

    Returns ``(None, 0)`` when no price trades any volume.
    """
    best: tuple[int, int, int] | None = None  # (-volume, imbalance, price): smallest wins
    for price in sorted({order.price for order in orders}):
        demand = sum(order.remaining for order in orders if order.side == "buy" and order.price >= price)
        supply = sum(order.remaining for order in orders if order.side == "sell" and order.price <= price)
        key = (-min(demand, supply), abs(demand - supply), price)
        if best is None or key < best:
            best = key
    if best is None or best[0] == 0:
        return None, 0
    return best[2], -best[0]


class CallMarket(MarketMechanism):
    """A periodic call market with a volume-maximising uniform price (see the module docstring)."""

    kind = "call_market"
    event_type = Annotated[LimitOrder | Cancel | Clear | Close, Field(discriminator="type")]

    def __init__(self, config: MarketConfig | dict[str, object]) -> None:
        super().__init__(config)
        self._orders: dict[str, RestingOrder] = {}
        self._prices: list[int | None] = []

    def _step(self, event: LimitOrder | Cancel | Clear | Close, now: int) -> list[Action]:
        if isinstance(event, Close):
            resting = sorted(self._orders.values(), key=lambda order: order.seq)
            self._outcome = MarketOutcome(trades=list(self._trades), clearing_prices=list(self._prices),
                                          resting=resting)
            return []
        if isinstance(event, Clear):
            return self._call(now)
        _check_order(event, self.config, self._seen, self._orders)
        if isinstance(event, Cancel):
            order = self._orders.pop(event.order_id)
            return [OrderDone(order_id=order.order_id, reason="cancelled", remaining=order.remaining)]
        self._accept_order(event)
        self._orders[event.order_id] = RestingOrder(order_id=event.order_id, trader=event.trader,
                                                    side=event.side, price=event.price,
                                                    remaining=event.quantity, seq=self._seq)
        return []

    def _call(self, now: int) -> list[Action]:
        orders = list(self._orders.values())
        price, volume = clearing_price(orders)
        self._prices.append(price)
        if price is None:
            return []
        buys = sorted((o for o in orders if o.side == "buy" and o.price >= price), key=lambda o: (-o.price, o.seq))
        sells = sorted((o for o in orders if o.side == "sell" and o.price <= price), key=lambda o: (o.price, o.seq))
        actions: list[Action] = []
        fills: dict[str, int] = {}
        buy_index = sell_index = 0
        left = volume
        while left:
            buy, sell = buys[buy_index], sells[sell_index]
            quantity = min(left, buy.remaining - fills.get(buy.order_id, 0),
                           sell.remaining - fills.get(sell.order_id, 0))
            trade = Trade(buy_order=buy.order_id, sell_order=sell.order_id, buyer=buy.trader, seller=sell.trader,
                          price=price, quantity=quantity, at=now)
            actions.append(trade)
            self._trades.append(trade)
            left -= quantity
            for order in (buy, sell):
                fills[order.order_id] = fills.get(order.order_id, 0) + quantity
            if fills[buy.order_id] == buy.remaining:
                buy_index += 1
            if fills[sell.order_id] == sell.remaining:
                sell_index += 1
        for order_id, filled in sorted(fills.items()):
            order = self._orders[order_id]
            if filled == order.remaining:
                del self._orders[order_id]
                actions.append(OrderDone(order_id=order_id, reason="filled", remaining=0))
            else:
                self._orders[order_id] = order.model_copy(update={"remaining": order.remaining - filled})
        return actions

    def resting(self) -> list[RestingOrder]:
        """Orders waiting for the next call, in arrival order."""
        return sorted(self._orders.values(), key=lambda order: order.seq)
