"""Outcome receipts: the inputs, the outcome and a stable hash anyone can recompute.

A receipt holds the mechanism's kind, its validated configuration, every
accepted event with the time it was applied, and the outcome, all as plain
JSON values. Its ``hash`` is the SHA-256 (hex) of the canonical JSON encoding
of those four fields plus a format version:

* keys sorted, separators ``","`` and ``":"``, UTF-8, no insignificant spaces;
* **no floating-point numbers anywhere**: every amount, price, quantity,
  weight and time in this package is an integer (amounts are in the smallest
  unit of account, e.g. micro-credits; times are the caller's clock ticks).
  Ratios such as a supermajority threshold are pairs of integers. The encoder
  refuses floats, so two implementations can never disagree on how ``0.1``
  prints.

``verify_receipt`` checks the hash and then *recomputes* the outcome by
replaying the events into a fresh mechanism of the same kind, so a receipt
proves not only integrity but correctness.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from coordinator.mechanisms.errors import MechanismError

#: Bumped whenever the hashed layout changes, so old receipts stay verifiable by version.
RECEIPT_VERSION = 1


class Receipt(BaseModel):
    """A final outcome with the inputs it was computed from and its hash."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = RECEIPT_VERSION
    mechanism: str
    config: dict[str, Any]
    events: list[dict[str, Any]]
    outcome: dict[str, Any]
    hash: str


def _reject_floats(value: Any, path: str) -> None:
    # Floats have several valid textual forms; refusing them keeps the hash unambiguous.
    if isinstance(value, float):
        raise TypeError(f"float at {path or '<root>'} cannot be hashed canonically; use integers")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"non-string key {key!r} at {path or '<root>'}")
            _reject_floats(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _reject_floats(item, f"{path}[{index}]")


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 JSON encoding of ``value`` (sorted keys, compact, floats refused)."""
    _reject_floats(value, "")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def receipt_hash(mechanism: str, config: Mapping[str, Any], events: list[dict[str, Any]],
                 outcome: Mapping[str, Any], version: int = RECEIPT_VERSION) -> str:
    """The hex SHA-256 of the canonical JSON of a receipt's hashed fields."""
    body = {"version": version, "mechanism": mechanism, "config": config, "events": events,
            "outcome": outcome}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def make_receipt(mechanism: str, config: dict[str, Any], events: list[dict[str, Any]],
                 outcome: dict[str, Any]) -> Receipt:
    """Build a receipt and stamp it with its hash."""
    digest = receipt_hash(mechanism, config, events, outcome)
    return Receipt(mechanism=mechanism, config=config, events=events, outcome=outcome, hash=digest)


def verify_receipt(receipt: Receipt | Mapping[str, Any]) -> bool:
    """True when the hash matches the contents *and* replaying the events reproduces the outcome.

    Any malformed receipt, unknown mechanism kind or rejected event makes it
    False rather than raising, since a verifier is asked a yes/no question.
    """
    # Imported here: the registry lives in base, which itself imports this module.
    from coordinator.mechanisms.base import mechanism_class

    try:
        parsed = receipt if isinstance(receipt, Receipt) else Receipt.model_validate(receipt)
        if parsed.version != RECEIPT_VERSION:
            return False
        expected = receipt_hash(parsed.mechanism, parsed.config, parsed.events, parsed.outcome,
                                parsed.version)
        if expected != parsed.hash:
            return False
        cls = mechanism_class(parsed.mechanism)
        rebuilt = cls.replay(parsed.config, parsed.events)
        recomputed = rebuilt.receipt()
    except (MechanismError, ValueError, TypeError, KeyError):
        return False
    return recomputed.hash == parsed.hash and recomputed.outcome == parsed.outcome
