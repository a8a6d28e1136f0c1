"""The one provider interface's data: requests, responses, stream deltas, usage, and the error tree.

Plain frozen dataclasses, no I/O: adapters translate them to and from each
provider's wire format, the gRPC ModelService to and from protobuf.

Errors: every failure of a model call is a :class:`ModelError` whose ``kind``
says what happened (the resilience layer decides on the kind, never on a
provider's text), whose ``retryable`` says whether another attempt may succeed,
and whose ``retry_after_s`` carries a provider's ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call the model asked for: its id, the tool's name and the arguments as JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message. ``role``: system | user | assistant | tool; tool results name ``tool_call_id``."""

    role: str
    content: str = ""
    name: str = ""
    tool_call_id: str = ""
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool the model may call: name, description and its parameters as a JSON Schema object."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat completion request, provider-neutral.

    ``model`` is a configured model or route name (the router resolves it).
    ``response_schema`` asks for structured output (JSON matching the schema);
    ``json_mode`` asks for any JSON object. ``max_tokens`` of 0 means the model's
    configured default (always sent, so a budget's worst case holds).
    """

    model: str
    messages: tuple[Message, ...]
    tools: tuple[Tool, ...] = ()
    response_schema: Mapping[str, Any] | None = None
    json_mode: bool = False
    temperature: float | None = None
    max_tokens: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the provider reported them."""

    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output."""
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class ChatResponse:
    """A finished completion: text, tool calls, why it stopped, usage, the model that answered, latency."""

    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str = "stop"
    usage: Usage = Usage()
    model: str = ""
    latency_s: float = 0.0


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer's text, in order."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call: ``index`` identifies the call; id and name come first, arguments in pieces."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The end of a stream: the assembled response (with usage)."""

    response: ChatResponse


StreamEvent = TextDelta | ToolCallDelta | StreamEnd


class ErrorKind(StrEnum):
    """What went wrong, as the resilience layer and the error contract see it."""

    REJECTED = "rejected"  # the provider refused the request (400, 404, 422): never retried
    AUTH = "auth"  # 401/403: the key is wrong; never retried
    RATE_LIMITED = "rate_limited"  # 429 from the provider, or our own per-provider/tenant limit
    UNAVAILABLE = "unavailable"  # 5xx, connection refused or reset
    TIMEOUT = "timeout"  # an attempt or the whole call ran out of time
    MALFORMED = "malformed"  # the provider answered something that does not parse
    STREAM_CUT = "stream_cut"  # the connection dropped mid-stream
    CIRCUIT_OPEN = "circuit_open"  # every candidate's breaker is open
    BULKHEAD_FULL = "bulkhead_full"  # too many calls in flight and queued for the provider
    BUDGET_EXHAUSTED = "budget_exhausted"  # the reservation did not fit the budget
    INVALID = "invalid"  # our own validation: unknown model, bad fields
    LEDGER_UNAVAILABLE = "ledger_unavailable"  # the budget store (etcd) could not be reached: nothing was sent
    QUOTA_EXCEEDED = "quota_exceeded"  # the tenant's model_max_tokens / model_max_cost_nusd quota (mesh TenantQuota)


#: Kinds another attempt (after a backoff) may fix.
RETRYABLE = frozenset({ErrorKind.RATE_LIMITED, ErrorKind.UNAVAILABLE, ErrorKind.TIMEOUT, ErrorKind.MALFORMED,
                       ErrorKind.STREAM_CUT})
#: Kinds that count as a failure of the provider endpoint for its circuit breaker.
BREAKER_FAILURES = frozenset({ErrorKind.UNAVAILABLE, ErrorKind.TIMEOUT, ErrorKind.MALFORMED,
                              ErrorKind.STREAM_CUT})


class ModelError(Exception):
    """A model call failed; ``kind`` says how (see :class:`ErrorKind`)."""

    def __init__(self, kind: ErrorKind, message: str, *, status: int = 0, retry_after_s: float | None = None,
                 provider: str = "", model: str = "", local: bool = False,
                 metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        #: ErrorInfo metadata for the caller (QUOTA_EXCEEDED: tenant, quota, limit, used).
        self.metadata = dict(metadata or {})
        #: Raised by our own limits (rate limit, bulkhead), not by the provider: never counts against its breaker.
        self.local = local
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s
        self.provider = provider
        self.model = model

    @property
    def retryable(self) -> bool:
        """Whether another attempt may succeed."""
        return self.kind in RETRYABLE

    def __repr__(self) -> str:
        return f"ModelError({self.kind.value}, {self.message!r}, status={self.status})"
