"""Mechanism benchmarks: sealed-bid outcome time, VCG solve time, double-auction throughput.

``run(quick)`` returns:
* ``sealed_10k_ms``: closing a second-price auction holding 10,000 bids (ranking, pricing and
  the receipt hash over all 10,000 events), median over repeats; ``sealed_10k_apply_ms`` is the
  time to apply the 10,000 validated bids before it.
* ``vcg_20x200_ms``: winner determination plus VCG payments for 20 items and 200 XOR bundle
  bids (random instances, fixed seeds), median over instances; ``vcg_20x200_max_ms`` the worst.
* ``cda_orders_per_s``: limit, market and cancel orders applied per second by the continuous
  double auction (validation, matching, actions), with ``cda_trades`` executed.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from coordinator.mechanisms.base import Close
from coordinator.mechanisms.combinatorial import BundleBid, BundleOffer, CombinatorialAuction
from coordinator.mechanisms.errors import MechanismError
from coordinator.mechanisms.market import Cancel, DoubleAuction, LimitOrder, MarketOrder, Side, Trade
from coordinator.mechanisms.sealed import Bid, SealedBidAuction


def _sealed(repeats: int) -> dict[str, float]:
    closes, applies = [], []
    for seed in range(repeats):
        rng = random.Random(seed)
        bids = [Bid(bidder=f"b{i}", amount=rng.randint(1, 10**9)) for i in range(10_000)]
        auction = SealedBidAuction({"pricing": "second", "reserve": 1})
        start = time.perf_counter()
        for now, bid in enumerate(bids):
            auction.apply(bid, now)
        applies.append(time.perf_counter() - start)
        start = time.perf_counter()
        auction.apply(Close(), 10_000)
        closes.append(time.perf_counter() - start)
    return {"sealed_10k_ms": statistics.median(closes) * 1000,
            "sealed_10k_apply_ms": statistics.median(applies) * 1000}


def vcg_instance(seed: int, items: int = 20, bundles: int = 200) -> CombinatorialAuction:
    """A random combinatorial auction with ``bundles`` XOR bundle bids over ``items`` items, not yet closed."""
    rng = random.Random(seed)
    names = [f"i{k}" for k in range(items)]
    auction = CombinatorialAuction({"items": names})
    placed = bidder = 0
    while placed < bundles:
        wanted = min(rng.randint(1, 4), bundles - placed)
        seen: set[frozenset[str]] = set()
        offers: list[BundleOffer] = []
        while len(offers) < wanted:
            bundle = frozenset(rng.sample(names, rng.randint(1, 5)))
            if bundle not in seen:
                seen.add(bundle)
                # Super-additive-ish values: roughly proportional to size, with noise.
                offers.append(BundleOffer(items=sorted(bundle), amount=rng.randint(1, 10**6) * len(bundle)))
        auction.apply(BundleBid(bidder=f"b{bidder}", bundles=offers), bidder)
        placed += wanted
        bidder += 1
    return auction


def _vcg(instances: int) -> dict[str, float]:
    times = []
    for seed in range(instances):
        auction = vcg_instance(seed)
        start = time.perf_counter()
        auction.apply(Close(), 10**6)
        times.append(time.perf_counter() - start)
    return {"vcg_20x200_ms": statistics.median(times) * 1000, "vcg_20x200_max_ms": max(times) * 1000}


def _cda(orders: int) -> dict[str, float]:
    rng = random.Random(7)
    events: list[Any] = []
    for index in range(orders):
        roll = rng.random()
        side: Side = "buy" if rng.random() < 0.5 else "sell"
        trader = f"t{rng.randint(0, 99)}"
        if roll < 0.1 and index:
            events.append(Cancel(order_id=f"o{rng.randrange(index)}", trader=trader))
        elif roll < 0.2:
            events.append(MarketOrder(order_id=f"o{index}", trader=trader, side=side, quantity=rng.randint(1, 20)))
        else:
            # Prices around 1000 with the bid side a little lower, so the book stays populated and crosses often.
            offset = rng.randint(-20, 15) if side == "buy" else rng.randint(-15, 20)
            events.append(LimitOrder(order_id=f"o{index}", trader=trader, side=side, price=1000 + offset,
                                     quantity=rng.randint(1, 20)))
    market = DoubleAuction({})
    trades = rejected = 0
    start = time.perf_counter()
    for now, event in enumerate(events):
        try:
            actions = market.apply(event, now)
        except MechanismError:  # cancels of filled or foreign orders are refused, as they should be
            rejected += 1
            continue
        trades += sum(1 for action in actions if isinstance(action, Trade))
    elapsed = time.perf_counter() - start
    return {"cda_orders_per_s": orders / elapsed, "cda_orders": orders, "cda_trades": trades,
            "cda_rejected": rejected}


def run(quick: bool) -> dict[str, Any]:
    """Run the three measurements; ``quick`` uses fewer repeats and orders (well under 60 s)."""
    result: dict[str, Any] = {"note": "shared 2-core machine; timings are noisy"}
    result.update(_sealed(repeats=3 if quick else 10))
    result.update(_vcg(instances=3 if quick else 10))
    result.update(_cda(orders=20_000 if quick else 100_000))
    return {key: round(value, 2) if isinstance(value, float) else value for key, value in result.items()}
