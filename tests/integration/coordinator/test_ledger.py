"""The ledger through a real coordinator: no overdraw under concurrency, escrow held, settled and released."""

from __future__ import annotations

import asyncio

from mabeam.dev.testing import async_wait_until
from mabeam_client.coordinator import CoordinatorClient
from mabeam_client.errors import FailedPrecondition


async def _balances(coord: CoordinatorClient) -> dict[str, tuple[int, int]]:
    return {b.agent: (b.available, b.held) for b in await coord.balances()}


async def test_fifty_concurrent_spends_never_overdraw(coordinators) -> None:
    # 50 transfers of 30 race against a balance of 1000: exactly 33 succeed, the rest are refused.
    cluster = coordinators(1)
    async with CoordinatorClient(cluster.coordinator_endpoints) as coord:
        await coord.deposit("payer", 1000)
        results = await asyncio.gather(*(coord.transfer("payer", f"shop{i}", 30) for i in range(50)),
                                       return_exceptions=True)
        refused = [r for r in results if isinstance(r, FailedPrecondition)]
        assert all(r.reason == "INSUFFICIENT_FUNDS" for r in refused)
        assert (len(results) - len(refused), len(refused)) == (33, 17)
        balances = await _balances(coord)
        assert balances["payer"] == (10, 0)
        assert sum(a + h for a, h in balances.values()) == 1000


async def test_escrow_settles_winner_and_releases_losers_and_cancel(coordinators) -> None:
    # Bids hold funds; an over-budget bid is refused with nothing changed; closing pays the second
    # price to the seller and releases the loser; cancelling another auction releases its holds.
    cluster = coordinators(1)
    async with CoordinatorClient(cluster.coordinator_endpoints) as coord:
        for agent in ("a", "b", "c"):
            await coord.deposit(agent, 100)
        auction = await coord.create_auction("sealed", {"pricing": "second"}, escrow=True, seller="s")
        await coord.submit_bid(auction.id, {"type": "bid", "bidder": "a", "amount": 60})
        await coord.submit_bid(auction.id, {"type": "bid", "bidder": "b", "amount": 50})
        assert (await coord.balance("a")).held == 60
        try:
            await coord.submit_bid(auction.id, {"type": "bid", "bidder": "c", "amount": 150})
            raise AssertionError("an over-budget bid was accepted")
        except FailedPrecondition as error:
            assert error.reason == "INSUFFICIENT_FUNDS"
        assert (await coord.get_auction(auction.id)).event_count == 2
        closed = await coord.close_instance(auction.id)
        assert closed.outcome["price"] == 50

        async def settled() -> bool:
            return await _balances(coord) == {"a": (50, 0), "b": (100, 0), "c": (100, 0), "s": (50, 0)}

        await async_wait_until(settled, 5, what="settlement")
        other = await coord.create_auction("sealed", {"pricing": "first"}, escrow=True)
        await coord.submit_bid(other.id, {"type": "bid", "bidder": "b", "amount": 70})
        assert (await coord.balance("b")).held == 70
        assert (await coord.cancel(other.id, "operator")).state == "cancelled"
        assert (await coord.balance("b")).held == 0
        assert (await coord.balance("b")).available == 100


async def test_market_escrow_trades_and_book(coordinators) -> None:
    # A buy limit order holds price x quantity; a trade pays from it and credits the seller; cancel returns the rest.
    cluster = coordinators(1)
    async with CoordinatorClient(cluster.coordinator_endpoints) as coord:
        await coord.deposit("buyer", 1000)
        market = await coord.create_market("double_auction", {}, escrow=True)
        await coord.place_order(market.id, {"type": "limit", "order_id": "o1", "trader": "buyer", "side": "buy",
                                            "price": 5, "quantity": 10})
        assert (await coord.balance("buyer")).held == 50
        try:
            await coord.place_order(market.id, {"type": "market", "order_id": "o9", "trader": "buyer",
                                                "side": "buy", "quantity": 1})
            raise AssertionError("an unpriced buy order was accepted under escrow")
        except FailedPrecondition as error:
            assert error.reason == "ESCROW_REFUSED"
        await coord.place_order(market.id, {"type": "limit", "order_id": "o2", "trader": "seller", "side": "sell",
                                            "price": 4, "quantity": 4})
        book = await coord.book(market.id)
        assert [(lv.price, lv.quantity) for lv in book.bids] == [(5, 6)] and not book.asks
        assert await _balances(coord) == {"buyer": (950, 30), "seller": (20, 0)}
        await coord.cancel_order(market.id, "o1", "buyer")
        assert await _balances(coord) == {"buyer": (980, 0), "seller": (20, 0)}
        trades = []
        async for trade in coord.watch_trades(market.id):
            trades.append(trade)
            break
        assert (trades[0].buyer, trades[0].seller, trades[0].price, trades[0].quantity) == ("buyer", "seller", 5, 4)
