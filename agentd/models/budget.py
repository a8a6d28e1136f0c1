"""Budgets, prices and worst-case estimates: the arithmetic of "reserve before, settle after", pure.

Units are integers so that a ledger shared through etcd never drifts: tokens,
and cost in **nano-dollars** (1e-9 USD). A budget has optional limits on each;
its state counts what was ``spent`` (settled calls) and what is ``reserved``
(calls in flight, at their worst case). The invariant every operation keeps::

    spent + reserved <= limit        (for each limited quantity)

:func:`reserve` refuses (returns None) rather than break it; :func:`settle`
releases a reservation and charges the actual usage. Actual usage is at most
the reservation when the worst case was computed from the request (``max_tokens``
is sent to the provider; prompt tokens are bounded by UTF-8 bytes, since every
token covers at least one byte), so settled spending never passes the limit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

from agentd.models.types import ChatRequest, Usage

NANO_PER_USD = 1_000_000_000
#: Per-message framing tokens added to the prompt bound (role markers, separators).
MESSAGE_OVERHEAD_TOKENS = 8


@dataclass(frozen=True, slots=True)
class Amount:
    """Tokens and cost (nano-dollars) of one call, reserved or actual."""

    tokens: int = 0
    cost_nusd: int = 0

    def __add__(self, other: Amount) -> Amount:
        return Amount(self.tokens + other.tokens, self.cost_nusd + other.cost_nusd)


@dataclass(frozen=True, slots=True)
class Price:
    """A model's price per 1,000 input and output tokens, in nano-dollars."""

    input_per_1k_nusd: int = 0
    output_per_1k_nusd: int = 0

    @classmethod
    def from_usd(cls, input_per_1k: float, output_per_1k: float) -> Price:
        """From dollars per 1k tokens (the way price lists are written)."""
        return cls(round(input_per_1k * NANO_PER_USD), round(output_per_1k * NANO_PER_USD))

    def cost(self, input_tokens: int, output_tokens: int) -> int:
        """Cost in nano-dollars, rounded up (a budget is never under-charged)."""
        return math.ceil((input_tokens * self.input_per_1k_nusd + output_tokens * self.output_per_1k_nusd) / 1000)

    def amount(self, usage: Usage) -> Amount:
        """The tokens and cost of an actual usage."""
        return Amount(usage.total_tokens, self.cost(usage.input_tokens, usage.output_tokens))


def prompt_token_bound(request: ChatRequest) -> int:
    """An upper bound on the prompt's tokens: UTF-8 bytes of everything sent, plus framing per message."""
    total = 0
    for message in request.messages:
        total += MESSAGE_OVERHEAD_TOKENS + len(message.role) + len(message.content.encode())
        total += len(message.name.encode()) + len(message.tool_call_id.encode())
        for call in message.tool_calls:
            total += len(call.id.encode()) + len(call.name.encode()) + len(call.arguments.encode())
    for tool in request.tools:
        total += MESSAGE_OVERHEAD_TOKENS + len(tool.name.encode()) + len(tool.description.encode())
        total += len(json.dumps(tool.parameters, separators=(",", ":")).encode())
    if request.response_schema is not None:
        total += len(json.dumps(request.response_schema, separators=(",", ":")).encode())
    return total


def worst_case(request: ChatRequest, max_tokens: int, price: Price) -> Amount:
    """The most a call can cost: the prompt bound in, ``max_tokens`` out."""
    prompt = prompt_token_bound(request)
    return Amount(prompt + max_tokens, price.cost(prompt, max_tokens))


@dataclass(frozen=True, slots=True)
class BudgetState:
    """One budget (a tenant's or a run's): limits (None = unlimited), spent and reserved amounts."""

    limit_tokens: int | None = None
    limit_cost_nusd: int | None = None
    spent_tokens: int = 0
    spent_cost_nusd: int = 0
    reserved_tokens: int = 0
    reserved_cost_nusd: int = 0

    def to_json(self) -> bytes:
        """Compact JSON, the value stored in etcd."""
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> BudgetState:
        """Parse a stored budget; ValueError when it is not one."""
        data: Any = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a budget must be a JSON object")
        fields = {name: data.get(name) for name in cls.__dataclass_fields__}
        for name, value in fields.items():
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"budget field {name} must be a non-negative integer")
        def count(name: str) -> int:
            value = fields[name]
            return value if isinstance(value, int) else 0

        def limit(name: str) -> int | None:
            value = fields[name]
            return value if isinstance(value, int) else None

        return cls(limit("limit_tokens"), limit("limit_cost_nusd"), count("spent_tokens"),
                   count("spent_cost_nusd"), count("reserved_tokens"), count("reserved_cost_nusd"))

    def with_limits(self, limit_tokens: int | None, limit_cost_nusd: int | None) -> BudgetState:
        """The same counters under new limits."""
        return replace(self, limit_tokens=limit_tokens, limit_cost_nusd=limit_cost_nusd)

    def remaining(self) -> Amount:
        """What could still be reserved (a very large number for an unlimited quantity)."""
        big = 2**62
        tokens = big if self.limit_tokens is None else self.limit_tokens - self.spent_tokens - self.reserved_tokens
        cost = (big if self.limit_cost_nusd is None
                else self.limit_cost_nusd - self.spent_cost_nusd - self.reserved_cost_nusd)
        return Amount(max(0, tokens), max(0, cost))

    @property
    def overspent(self) -> Amount:
        """How far settled spending passed the limits (0 when the invariant held)."""
        tokens = 0 if self.limit_tokens is None else max(0, self.spent_tokens - self.limit_tokens)
        cost = 0 if self.limit_cost_nusd is None else max(0, self.spent_cost_nusd - self.limit_cost_nusd)
        return Amount(tokens, cost)


def reserve(state: BudgetState, amount: Amount) -> BudgetState | None:
    """The state with `amount` reserved, or None if it does not fit under a limit."""
    if amount.tokens < 0 or amount.cost_nusd < 0:
        raise ValueError("a reservation cannot be negative")
    room = state.remaining()
    if amount.tokens > room.tokens or amount.cost_nusd > room.cost_nusd:
        return None
    return replace(state, reserved_tokens=state.reserved_tokens + amount.tokens,
                   reserved_cost_nusd=state.reserved_cost_nusd + amount.cost_nusd)


def settle(state: BudgetState, reserved: Amount, actual: Amount) -> BudgetState:
    """Release a reservation and charge the actual amount (zero for a call that sent nothing)."""
    if actual.tokens < 0 or actual.cost_nusd < 0:
        raise ValueError("an actual amount cannot be negative")
    return replace(state,
                   reserved_tokens=max(0, state.reserved_tokens - reserved.tokens),
                   reserved_cost_nusd=max(0, state.reserved_cost_nusd - reserved.cost_nusd),
                   spent_tokens=state.spent_tokens + actual.tokens,
                   spent_cost_nusd=state.spent_cost_nusd + actual.cost_nusd)


def reserve_all(states: Iterable[BudgetState], amount: Amount) -> list[BudgetState] | None:
    """Reserve `amount` in every budget (a tenant's and a run's) or in none."""
    out = []
    for state in states:
        new = reserve(state, amount)
        if new is None:
            return None
        out.append(new)
    return out
