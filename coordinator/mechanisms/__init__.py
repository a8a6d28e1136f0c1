"""MABEAM mechanisms: auctions, markets, negotiation and votes as pure, deterministic state machines.

What it is
----------
Every mechanism is a class whose instances hold one auction, market,
negotiation or vote. It does no I/O and never reads a clock: the caller
passes each event together with the current time ``now`` (an integer in the
caller's ticks) and gets back a list of actions to carry out (messages to
send, a :class:`~coordinator.mechanisms.base.ScheduleTick` to arrange, a
:class:`~coordinator.mechanisms.base.Concluded` notice). Economic properties
and tie rules are stated in each module's docstring and checked by property
tests in ``tests/unit/mechanisms``.

Families: :mod:`.sealed` (first/second price), :mod:`.clock` (English,
Dutch), :mod:`.multiunit` (uniform, pay-as-bid, Vickrey),
:mod:`.combinatorial` (XOR bids, VCG), :mod:`.market` (continuous double
auction, call market), :mod:`.contract_net`, :mod:`.bargaining`
(alternating offers, Nash mediator), :mod:`.voting`.

How to use it
-------------
::

    auction = SealedBidAuction({"pricing": "second", "reserve": 10})
    auction.apply({"type": "bid", "bidder": "a", "amount": 50}, now=1)
    auction.apply(Bid(bidder="b", amount=40), now=2)
    auction.apply(Close(), now=3)
    auction.outcome()          # winner='a' price=40 ...
    receipt = auction.receipt()
    verify_receipt(receipt)    # True: hash checks and replay reproduces the outcome

What a caller must do
---------------------
* Feed events one at a time with a non-decreasing ``now``; deliver a
  ``Tick`` when a ``ScheduleTick`` comes due (deadlines only take effect on
  an event at or after them).
* Treat every :class:`~coordinator.mechanisms.errors.MechanismError` as a
  rejection: the state is unchanged and the event must not be persisted.
* Persist every accepted event (``accepted_events()``, JSON-serialisable
  ``{"now", "event"}`` records) in order; ``Cls.replay(config, records)``
  rebuilds the identical state after a failover.
* All amounts are integers in the smallest unit of account (no floats
  anywhere), which keeps receipt hashes canonical; see :mod:`.receipts`.
"""

from coordinator.mechanisms.bargaining import AlternatingOffers, MediatedBargaining
from coordinator.mechanisms.base import Accepted, Action, Close, Concluded, Mechanism, ScheduleTick, Tick
from coordinator.mechanisms.clock import DutchAuction, EnglishAuction
from coordinator.mechanisms.combinatorial import CombinatorialAuction
from coordinator.mechanisms.contract_net import ContractNet
from coordinator.mechanisms.errors import (
    InvalidConfig,
    InvalidEvent,
    MechanismClosed,
    MechanismError,
    ProblemTooLarge,
)
from coordinator.mechanisms.market import CallMarket, DoubleAuction
from coordinator.mechanisms.multiunit import MultiUnitAuction
from coordinator.mechanisms.receipts import Receipt, verify_receipt
from coordinator.mechanisms.sealed import Bid, SealedBidAuction
from coordinator.mechanisms.voting import Vote

__all__ = [
    "Accepted", "Action", "AlternatingOffers", "Bid", "CallMarket", "Close", "CombinatorialAuction", "Concluded",
    "ContractNet", "DoubleAuction", "DutchAuction", "EnglishAuction", "InvalidConfig", "InvalidEvent",
    "Mechanism", "MechanismClosed", "MechanismError", "MediatedBargaining", "MultiUnitAuction",
    "ProblemTooLarge", "Receipt", "ScheduleTick", "SealedBidAuction", "Tick", "Vote", "verify_receipt",
]
