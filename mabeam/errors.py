"""Rich gRPC errors: one exception tree for every daemon.

A failed call carries a gRPC status code, a message a person can act on, and
the standard ``google.rpc`` details: ``ErrorInfo`` (domain ``mabeam.io``, a
reason that is a name of ``mabeam.v1.ErrorReason``, optional metadata such as
the leader's address), ``BadRequest`` field violations and ``RetryInfo``, so a
client in any language can read why and what to fix.

Every error a daemon answers with is a :class:`ServiceError` — the data
plane's :class:`~mabeam.dataplane.errors.DataPlaneError` and agentd's
``AgentError`` are subclasses — and code anywhere just raises it. The daemons'
gRPC servers install :class:`mabeam.grpcutil.ErrorInterceptor`, the one place a
raised error becomes a status (and anything unexpected becomes INTERNAL with
its traceback logged).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "mabeam.io"

#: The reason a status carries when its error names none: the one reason that fits every error of the code.
DEFAULT_REASONS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.INVALID_ARGUMENT: "INVALID_FIELD",
    grpc.StatusCode.NOT_FOUND: "NOT_REGISTERED",
    grpc.StatusCode.ALREADY_EXISTS: "NAME_TAKEN",
    grpc.StatusCode.DEADLINE_EXCEEDED: "CALL_TIMEOUT",
    grpc.StatusCode.UNIMPLEMENTED: "NOT_IMPLEMENTED",
    grpc.StatusCode.INTERNAL: "INTERNAL_ERROR",
    grpc.StatusCode.UNKNOWN: "INTERNAL_ERROR",
}

_BY_VALUE: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}

#: Bounds on what a status carries: it travels in HTTP/2 trailers, which gRPC refuses past 16 KiB (a message
#: quoting a 300 KB request field would never reach the client; found by tests/fuzz).
MAX_MESSAGE = 1024
MAX_DETAIL = 256
MAX_VIOLATIONS = 16


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def code_from_value(value: int) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` for a numeric code (UNKNOWN for values gRPC does not define)."""
    return _BY_VALUE.get(value, grpc.StatusCode.UNKNOWN)


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field: its path (e.g. ``metadata``) and what is wrong with it."""

    field: str
    description: str


class ServiceError(Exception):
    """An error a daemon answers with; raise it anywhere, the error interceptor turns it into the status.

    ``code`` and ``reason`` may be class attributes of a subclass (``class NotFound(ServiceError): code =
    NOT_FOUND; reason = "NOT_REGISTERED"``) or given per instance; ``reason`` is a name of
    ``mabeam.v1.ErrorReason`` (a test checks every one used in the code), defaulting per code
    (:data:`DEFAULT_REASONS`). ``metadata`` goes into ErrorInfo (e.g. ``{"leader": "host:port"}``).
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    reason: str = ""

    def __init__(
        self,
        code: grpc.StatusCode | None = None,
        message: str = "",
        reason: str = "",
        violations: Sequence[FieldViolation] = (),
        retry_after_s: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        if reason:
            self.reason = reason
        elif not self.reason:
            self.reason = DEFAULT_REASONS.get(self.code, "")
        self.violations = tuple(violations)
        self.retry_after_s = retry_after_s
        #: ErrorInfo metadata (e.g. ``leader`` on WRONG_NODE, ``retention_floor`` on STALE_CURSOR).
        self.metadata = dict(metadata or {})

    @property
    def code_value(self) -> int:
        """The numeric status code (as carried in ``Envelope.error_code`` and ``BidError.code``)."""
        return int(self.code.value[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}/{self.reason or '-'}: {self.message!r})"

    def to_status(self) -> grpc.Status:
        """The grpc.Status with rich details for this error (message and details clipped to fit the trailers)."""
        details: list[any_pb2.Any] = []
        if self.reason:
            packed = any_pb2.Any()
            metadata = {_clip(k, MAX_DETAIL): _clip(v, MAX_DETAIL) for k, v in list(self.metadata.items())[:16]}
            packed.Pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=metadata))
            details.append(packed)
        if self.violations:
            packed = any_pb2.Any()
            packed.Pack(error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=_clip(v.field, MAX_DETAIL),
                                                            description=_clip(v.description, MAX_DETAIL))
                for v in self.violations[:MAX_VIOLATIONS]
            ]))
            details.append(packed)
        if self.retry_after_s is not None:
            packed = any_pb2.Any()
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after_s * 1e9))
            packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
            details.append(packed)
        message = _clip(self.message or self.code.name, MAX_MESSAGE)
        return rpc_status.to_status(status_pb2.Status(code=self.code_value, message=message, details=details))


def invalid_argument(violations: Sequence[FieldViolation]) -> ServiceError:
    """INVALID_ARGUMENT naming every bad field in one readable message."""
    message = "invalid request: " + "; ".join(f"{v.field}: {v.description}" for v in violations)
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message, "INVALID_FIELD", violations)


def raise_if(violations: Sequence[FieldViolation]) -> None:
    """Raise :func:`invalid_argument` when any field was found invalid."""
    if violations:
        raise invalid_argument(violations)


async def abort(context: grpc.aio.ServicerContext, error: ServiceError) -> NoReturn:
    """End the call with `error` and its rich details.

    Servicers behind :class:`mabeam.grpcutil.ErrorInterceptor` just ``raise error``; this is for code
    that must end a call from outside the servicer method (the interceptor does the same).
    """
    await context.abort_with_status(error.to_status())
    raise AssertionError("unreachable: abort_with_status raises")  # pragma: no cover
