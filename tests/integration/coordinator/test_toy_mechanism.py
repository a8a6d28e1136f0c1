"""A new mechanism kind is one module: this file defines one and runs it through real coordinator processes.

The coordinator loads this very file as a plugin (``COORDINATOR_MECHANISM_MODULES``,
the environment form of ``--mechanism-module``); nothing else in the tree knows the
kind. It gets a family (served by the auction RPCs), a deadline field (ticked by
the coordinator), escrow (hold, settlement), a status view, a listing in
ListMechanisms, and the CLI's ``--closes-in`` fills its closing field.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Annotated, Any, Literal

from pydantic import Field

from coordinator.mechanisms.base import (
    Action,
    Close,
    Ident,
    Mechanism,
    Model,
    Payment,
    PositiveAmount,
    ScheduleTick,
    Tick,
    Time,
)
from coordinator.mechanisms.errors import MechanismClosed
from coordinator.mechanisms.receipts import verify_receipt
from mabeam.dev.testing import wait_until


class PostedPriceConfig(Model):
    """A fixed price; unsold at ``closes_at`` (absolute ms) if given."""

    price: PositiveAmount
    closes_at: Time | None = None


class Buy(Model):
    """Take the item at the posted price."""

    type: Literal["buy"] = "buy"
    bidder: Ident


class PostedPriceOutcome(Model):
    """Who bought, at what price (None: unsold)."""

    winner: str | None
    price: int | None


class PostedPrice(Mechanism[PostedPriceConfig, PostedPriceOutcome]):
    """A posted-price sale: the first buyer gets the item at the price; unsold at the deadline."""

    kind = "posted_price_test"
    family = "auction"
    deadline_fields = ("closes_at",)
    closes_field = "closes_at"
    config_type = PostedPriceConfig
    event_type = Annotated[Buy | Close | Tick, Field(discriminator="type")]
    outcome_type = PostedPriceOutcome

    def _step(self, event: Buy | Close | Tick, now: int) -> list[Action]:
        deadline = self.config.closes_at
        if isinstance(event, Buy):
            if deadline is not None and now >= deadline:
                raise MechanismClosed(f"buy by {event.bidder!r} after closing time {deadline}")
            self._outcome = PostedPriceOutcome(winner=event.bidder, price=self.config.price)
            return []
        if isinstance(event, Tick) and deadline is not None and now < deadline:
            return [ScheduleTick(at=deadline)]
        if isinstance(event, Tick) and deadline is None:
            return []
        self._outcome = PostedPriceOutcome(winner=None, price=None)
        return []

    def required_hold(self, event: Model, current: int, now: int) -> int | None:
        return self.config.price if isinstance(event, Buy) else None

    def payments(self) -> list[Payment]:
        outcome = self._outcome
        if outcome is None or outcome.winner is None or outcome.price is None:
            return []
        return [Payment(outcome.winner, outcome.price)]

    def status_view(self, now: int) -> dict[str, Any]:
        return {"price": self.config.price, "sold": self._outcome is not None and self._outcome.winner is not None}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_a_kind_defined_in_a_test_module_runs_through_the_coordinator(coordinators, monkeypatch) -> None:
    from mabeam_client.coordinator import SyncCoordinatorClient

    monkeypatch.setenv("COORDINATOR_MECHANISM_MODULES", __file__)
    cluster = coordinators(1)
    with SyncCoordinatorClient(cluster.coordinator_endpoints) as coord:
        # Listed with what the coordinator and the CLI need to know, from the class alone.
        listed = {k.kind: k for k in coord.list_mechanisms()}
        mine = listed["posted_price_test"]
        assert (mine.family, list(mine.deadline_fields), mine.closes_field, mine.opens_field) == (
            "auction", ["closes_at"], "closes_at", "")
        assert mine.summary.startswith("A posted-price sale")
        assert listed["sealed"].family == "auction" and listed["double_auction"].family == "market"

        # Escrow: the buy holds the price; settlement pays the seller out of the hold.
        coord.deposit("alice", 100)
        sale = coord.create_auction("posted_price_test", {"price": 30, "closes_at": now_ms() + 60_000},
                                    escrow=True, seller="shop")
        assert sale.status == {"events": 0, "price": 30, "sold": False}
        ack = coord.submit_bid(sale.id, {"type": "buy", "bidder": "alice"})
        assert ack.state == "concluded"
        wait_until(lambda: coord.balance("shop").available == 30, 10, what="the seller is paid")
        alice = coord.balance("alice")
        assert (alice.available, alice.held) == (70, 0)
        done = coord.get_auction(sale.id)
        assert done.outcome == {"winner": "alice", "price": 30}
        assert done.status["sold"] is True
        assert verify_receipt(done.receipt)  # replays here: the kind is registered in both

        # The deadline field is ticked by the coordinator: unsold at closes_at with nobody buying.
        soon = coord.create_auction("posted_price_test", {"price": 5, "closes_at": now_ms() + 300})
        wait_until(lambda: coord.get_auction(soon.id).state == "concluded", 15, what="the deadline closes it")
        assert coord.get_auction(soon.id).outcome == {"winner": None, "price": None}

        # Not a negotiation: the family decides which RPCs serve the kind.
        from mabeam_client.errors import InvalidArgument

        try:
            coord.create_negotiation("posted_price_test", {"price": 5})
            raise AssertionError("created a posted_price_test through CreateNegotiation")
        except InvalidArgument as error:
            assert "not a negotiation" in str(error)

    # The CLI learns the kind's closing field from ListMechanisms (it never imports the coordinator).
    out = subprocess.run([sys.executable, "-m", "mabeam_client.cli", "--json", "auction", "--coordinator",
                          cluster.coordinator_endpoints[0], "create", "--kind", "posted_price_test", "--config", '{"price": 7}',
                          "--closes-in", "30"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    config = json.loads(out.stdout)["config"]
    assert config["price"] == 7 and config["closes_at"] > now_ms() + 20_000


def test_a_broken_plugin_stops_startup_with_a_clear_error(tmp_path) -> None:
    broken = tmp_path / "broken_kind.py"
    broken.write_text("raise RuntimeError('boom')\n")
    out = subprocess.run([sys.executable, "-m", "coordinator", "--mechanism-module", str(broken), "--etcd",
                          "127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"mechanism module {str(broken)!r} failed to load: RuntimeError: boom" in out.stderr
