"""Rich gRPC errors, the same way in every daemon.

A failed call carries a gRPC status code, a message a person can act on, and
the standard ``google.rpc`` details (ErrorInfo with a mabeam ErrorReason,
BadRequest field violations, RetryInfo), so a client in any language can read
why and what to fix. ``abort`` is the one place servicers build them.
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


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field: its path (e.g. ``metadata``) and what is wrong with it."""

    field: str
    description: str


class ServiceError(Exception):
    """An error a servicer answers with; raised by core code that has no gRPC context."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        violations: Sequence[FieldViolation] = (),
        retry_after_s: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.violations = tuple(violations)
        self.retry_after_s = retry_after_s
        #: ErrorInfo metadata (e.g. ``retention_floor`` on a STALE_CURSOR answer).
        self.metadata = dict(metadata or {})

    def to_status(self) -> grpc.Status:
        """The grpc.Status with rich details for this error."""
        details: list[any_pb2.Any] = []
        if self.reason:
            packed = any_pb2.Any()
            packed.Pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata))
            details.append(packed)
        if self.violations:
            packed = any_pb2.Any()
            packed.Pack(error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in self.violations
            ]))
            details.append(packed)
        if self.retry_after_s is not None:
            packed = any_pb2.Any()
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after_s * 1e9))
            packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
            details.append(packed)
        return rpc_status.to_status(status_pb2.Status(code=self.code.value[0], message=self.message, details=details))


def invalid_argument(violations: Sequence[FieldViolation]) -> ServiceError:
    """INVALID_ARGUMENT naming every bad field in one readable message."""
    message = "invalid request: " + "; ".join(f"{v.field}: {v.description}" for v in violations)
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message, "INVALID_FIELD", violations)


async def abort(context: grpc.aio.ServicerContext, error: ServiceError) -> NoReturn:
    """End the call with `error` and its rich details."""
    await context.abort_with_status(error.to_status())
    raise AssertionError("unreachable: abort_with_status raises")  # pragma: no cover
