"""MABEAM mechanisms: auctions, markets, negotiation and votes as pure, deterministic state machines.

(Full usage notes are filled in as the families land.)
"""

from coordinator.mechanisms.clock import DutchAuction, EnglishAuction
from coordinator.mechanisms.sealed import SealedBidAuction

__all__ = ["DutchAuction", "EnglishAuction", "SealedBidAuction"]
