"""Double auction and call market: crossing prices, conservation, price-time priority, volume maximisation."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from mechanism_helpers import PROPERTY, rejects, try_apply

from coordinator.mechanisms.base import Close
from coordinator.mechanisms.errors import InvalidEvent, MechanismClosed
from coordinator.mechanisms.market import (
    CallMarket,
    Cancel,
    Clear,
    DoubleAuction,
    LimitOrder,
    MarketOrder,
    Trade,
)

TRADERS = ["t0", "t1", "t2", "t3"]


@st.composite
def order_flow(draw: st.DrawFn, with_market: bool = True) -> list[Any]:
    """A random sequence of limit, market and cancel events over a narrow price range (many crossings)."""
    events: list[Any] = []
    for index in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["limit", "limit", "limit", "market", "cancel"] if with_market
                                    else ["limit", "limit", "limit", "cancel"]))
        trader = draw(st.sampled_from(TRADERS))
        side = draw(st.sampled_from(["buy", "sell"]))
        quantity = draw(st.integers(1, 10))
        if kind == "limit":
            events.append(LimitOrder(order_id=f"o{index}", trader=trader, side=side,
                                     price=draw(st.integers(95, 105)), quantity=quantity))
        elif kind == "market":
            events.append(MarketOrder(order_id=f"o{index}", trader=trader, side=side, quantity=quantity))
        elif index:
            # Cancels target an earlier id, possibly filled already or owned by someone else (then refused).
            events.append(Cancel(order_id=f"o{draw(st.integers(0, index - 1))}", trader=trader))
    return events


def reference_trades(events: list[Any]) -> list[tuple[str, str, int, int]]:
    """A naive price-time matcher: scan every resting order for the best (price, arrival) each time."""
    book: list[dict[str, Any]] = []
    trades = []
    for seq, event in enumerate(events):
        if isinstance(event, Cancel):
            match = [o for o in book if o["id"] == event.order_id and o["trader"] == event.trader]
            for order in match:
                book.remove(order)
            continue
        left = event.quantity
        limit = getattr(event, "price", None)
        while left:
            candidates = [o for o in book if o["side"] != event.side and (
                limit is None or (o["price"] <= limit if event.side == "buy" else o["price"] >= limit))]
            if not candidates:
                break
            best = min(candidates, key=lambda o: (o["price"] if event.side == "buy" else -o["price"], o["seq"]))
            quantity = min(left, best["left"])
            left -= quantity
            best["left"] -= quantity
            buy, sell = (event.order_id, best["id"]) if event.side == "buy" else (best["id"], event.order_id)
            trades.append((buy, sell, best["price"], quantity))
            if best["left"] == 0:
                book.remove(best)
        if left and limit is not None:
            book.append({"id": event.order_id, "trader": event.trader, "side": event.side, "price": limit,
                         "left": left, "seq": seq})
    return trades


@PROPERTY
@given(events=order_flow())
def test_double_auction_crossing_conservation_and_price_time_priority(events: list[Any]) -> None:
    market = DoubleAuction({"traders": TRADERS})
    accepted = [event for now, event in enumerate(events) if try_apply(market, event, now)]
    trades = market.trades()
    limits = {e.order_id: (e.side, getattr(e, "price", None), e.quantity) for e in accepted
              if not isinstance(e, Cancel)}
    arrival = {e.order_id: i for i, e in enumerate(accepted) if not isinstance(e, Cancel)}
    # Price-time priority: identical to the naive reference matcher, trade for trade.
    assert [(t.buy_order, t.sell_order, t.price, t.quantity) for t in trades] == reference_trades(accepted)
    for trade in trades:
        _, buy_limit, _ = limits[trade.buy_order]
        _, sell_limit, _ = limits[trade.sell_order]
        # No trade outside the crossing prices, and the price is the resting (earlier) order's limit.
        assert buy_limit is None or trade.price <= buy_limit
        assert sell_limit is None or trade.price >= sell_limit
        resting = min(trade.buy_order, trade.sell_order, key=arrival.__getitem__)
        assert trade.price == limits[resting][1]
    # Conservation: units and credits net to zero across traders; no order fills beyond its quantity.
    units: Counter[str] = Counter()
    credits: Counter[str] = Counter()
    filled: Counter[str] = Counter()
    for trade in trades:
        units[trade.buyer] += trade.quantity
        units[trade.seller] -= trade.quantity
        credits[trade.buyer] -= trade.quantity * trade.price
        credits[trade.seller] += trade.quantity * trade.price
        filled[trade.buy_order] += trade.quantity
        filled[trade.sell_order] += trade.quantity
    assert sum(units.values()) == 0 and sum(credits.values()) == 0
    resting_left = {order.order_id: order.remaining for order in market.resting()}
    for order_id, (_, _, quantity) in limits.items():
        assert filled[order_id] + resting_left.get(order_id, 0) <= quantity
    # The book is never left crossed.
    bid, ask = market.best_bid(), market.best_ask()
    assert bid is None or ask is None or bid < ask


def test_double_auction_hand_example_and_validation() -> None:
    market = DoubleAuction({})
    market.apply(LimitOrder(order_id="s1", trader="ann", side="sell", price=101, quantity=5), 1)
    market.apply(LimitOrder(order_id="s2", trader="bob", side="sell", price=100, quantity=3), 2)
    market.apply(LimitOrder(order_id="s3", trader="cat", side="sell", price=100, quantity=4), 3)
    actions = market.apply(LimitOrder(order_id="b1", trader="dan", side="buy", price=101, quantity=9), 4)
    trades = [a for a in actions if isinstance(a, Trade)]
    # Best price first (100), earliest at that price first (s2 then s3), then 101; at the resting prices.
    assert [(t.sell_order, t.price, t.quantity) for t in trades] == [("s2", 100, 3), ("s3", 100, 4), ("s1", 101, 2)]
    rejects(market, LimitOrder(order_id="b1", trader="dan", side="buy", price=1, quantity=1), 5, InvalidEvent,
            "duplicate order id")
    rejects(market, Cancel(order_id="s1", trader="dan"), 5, InvalidEvent, "cannot cancel")
    rejects(market, Cancel(order_id="s2", trader="bob"), 5, InvalidEvent, "no such resting order")
    rejects(market, {"type": "limit", "order_id": "x", "trader": "a", "side": "buy", "price": 0, "quantity": 1},
            5, InvalidEvent, "price")
    market.apply(Cancel(order_id="s1", trader="ann"), 5)
    actions = market.apply(MarketOrder(order_id="m1", trader="eve", side="buy", quantity=2), 6)
    assert actions[-1].model_dump() == {"type": "order_done", "order_id": "m1", "reason": "cancelled",
                                        "remaining": 2}
    market.apply(Close(), 7)
    rejects(market, MarketOrder(order_id="m2", trader="eve", side="buy", quantity=2), 8, MechanismClosed)


def volume_at(orders: list[LimitOrder], price: int) -> int:
    demand = sum(o.quantity for o in orders if o.side == "buy" and o.price >= price)
    supply = sum(o.quantity for o in orders if o.side == "sell" and o.price <= price)
    return min(demand, supply)


@PROPERTY
@given(events=order_flow(with_market=False))
def test_call_market_price_maximises_volume(events: list[Any]) -> None:
    market = CallMarket({})
    accepted = [event for now, event in enumerate(events) if try_apply(market, event, now)]
    cancelled = {e.order_id for e in accepted if isinstance(e, Cancel)}
    live = [e for e in accepted if isinstance(e, LimitOrder) and e.order_id not in cancelled]
    actions = market.apply(Clear(), len(events))
    trades = [a for a in actions if isinstance(a, Trade)]
    best_volume = max((volume_at(live, p) for p in range(90, 111)), default=0)
    assert sum(t.quantity for t in trades) == best_volume
    if trades:
        price = trades[0].price
        assert volume_at(live, price) == best_volume
        limit = {o.order_id: o.price for o in live}
        for trade in trades:
            assert trade.price == price and limit[trade.buy_order] >= price >= limit[trade.sell_order]


def test_call_market_hand_example_and_tie_rule() -> None:
    market = CallMarket({})
    orders = [("b1", "buy", 105, 10), ("b2", "buy", 102, 5), ("s1", "sell", 100, 8), ("s2", "sell", 103, 10)]
    for now, (order_id, side, price, quantity) in enumerate(orders):
        market.apply(LimitOrder(order_id=order_id, trader=order_id, side=side, price=price, quantity=quantity), now)
    # Candidates: 100 -> min(15, 8) = 8 (imbalance 7); 102 -> min(15, 8) = 8 (imbalance 7);
    # 103 -> min(10, 18) = 10; 105 -> min(10, 18) = 10 (imbalance 8 for both): tie -> the lower, 103.
    actions = market.apply(Clear(), 10)
    trades = [(a.buy_order, a.sell_order, a.price, a.quantity) for a in actions if isinstance(a, Trade)]
    assert trades == [("b1", "s1", 103, 8), ("b1", "s2", 103, 2)]
    assert [(o.order_id, o.remaining) for o in market.resting()] == [("b2", 5), ("s2", 8)]
    market.apply(Close(), 11)
    outcome = market.outcome()
    assert outcome is not None and outcome.clearing_prices == [103]
