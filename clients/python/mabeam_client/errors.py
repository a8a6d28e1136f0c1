"""The SDK's error tree: one exception class per gRPC status code, with the server's rich details.

Every failed call raises a :class:`MabeamError` subclass — one per status code
(``InvalidArgument``, ``NotFound``, ..., ``Unimplemented``, ``Internal``,
``Unauthenticated``) — carrying the status ``code``, the server's
``message``, the ``reason`` (a ``mabeam.v1.ErrorReason`` name, from
``google.rpc.ErrorInfo``), the ErrorInfo ``metadata`` (e.g. ``leader`` on a
WRONG_NODE answer from a standby), ``field_violations`` (field → what is
wrong, from ``BadRequest``) and ``retry_after`` seconds (from ``RetryInfo``).
:func:`translate` is the one place anything the servers send back — a failed
RPC, or a refused bid inside a SubmitBids stream — becomes one of these.
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

from mabeam.v1 import coordinator_pb2


class MabeamError(Exception):
    """A call to a mabeam service failed."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, reason: str = "", field_violations: dict[str, str] | None = None,
                 retry_after: float | None = None, code: grpc.StatusCode | None = None,
                 metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.metadata = metadata or {}
        self.field_violations = field_violations or {}
        self.retry_after = retry_after
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class Cancelled(MabeamError):
    """The call was cancelled (usually by the caller)."""

    code = grpc.StatusCode.CANCELLED


class Unknown(MabeamError):
    """The server answered with an error it did not classify."""

    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(MabeamError):
    """The request is malformed; ``field_violations`` says which fields and why."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(MabeamError):
    """No answer before the deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(MabeamError):
    """The name, group, tenant, agent, instance or variable does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(MabeamError):
    """The name (or id) is taken."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(MabeamError):
    """The caller may not do this (tenant isolation, policy)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(MabeamError):
    """A limit was hit (mailbox full, quota); back off."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(MabeamError):
    """The request does not fit the current state (e.g. the name is owned by another node)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(MabeamError):
    """The operation was aborted (a stale version, a watcher that fell behind, an agent that exited); retry it."""

    code = grpc.StatusCode.ABORTED


class OutOfRange(MabeamError):
    """A value is past the valid range (e.g. reading past the end)."""

    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(MabeamError):
    """The server does not implement this method (or the agent does not answer calls)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(MabeamError):
    """The server failed unexpectedly; its log has the cause."""

    code = grpc.StatusCode.INTERNAL


class Unavailable(MabeamError):
    """The service (or etcd behind it) cannot be reached; retry after ``retry_after``."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(MabeamError):
    """Unrecoverable data loss or corruption."""

    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(MabeamError):
    """The call carries no valid credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


#: The SDK class of every status code but OK.
CLASSES: dict[grpc.StatusCode, type[MabeamError]] = {
    cls.code: cls for cls in (Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
                              PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted, OutOfRange,
                              Unimplemented, Internal, Unavailable, DataLoss, Unauthenticated)
}
_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}
_BY_NAME = {code.name: code for code in grpc.StatusCode}


def error_for(code: grpc.StatusCode | int | str, message: str, reason: str = "",
              field_violations: dict[str, str] | None = None, retry_after: float | None = None,
              metadata: dict[str, str] | None = None) -> MabeamError:
    """The SDK exception for a status code (the enum, its number or its name) and the details that came with it.

    What :func:`translate` builds every error with; also for codes that travel inside payloads (an
    external agent's error replies).
    """
    if isinstance(code, int):
        code = _BY_VALUE.get(code, grpc.StatusCode.UNKNOWN)
    elif isinstance(code, str):
        code = _BY_NAME.get(code, grpc.StatusCode.UNKNOWN)
    return CLASSES.get(code, MabeamError)(message, reason, field_violations, retry_after, code=code,
                                          metadata=metadata)


def translate(error: grpc.RpcError | coordinator_pb2.BidError) -> MabeamError:
    """The SDK exception for a failed call (or a refused bid of a SubmitBids stream), with its rich details."""
    if isinstance(error, coordinator_pb2.BidError):
        return error_for(error.code, error.message, error.reason)
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = (error.details() if hasattr(error, "details") else None) or str(error)
    reason, violations, retry, info_metadata = "", {}, None, {}
    metadata = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in metadata or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
                info_metadata = dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations = {v.field: v.description for v in bad.field_violations}
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info_retry = error_details_pb2.RetryInfo()
                detail.Unpack(info_retry)
                retry = info_retry.retry_delay.ToNanoseconds() / 1e9
    return error_for(code, message, reason, violations, retry, info_metadata)


def connection_lost(error: grpc.RpcError) -> bool:
    """True when the call failed because its connection went away, not because a server answered.

    That is UNAVAILABLE, INTERNAL or UNKNOWN without a server's ErrorInfo: gRPC reports a connection torn
    down under a live call (a server killed with -9 mid-stream) as ``INTERNAL: Internal error from Core``, a
    RST_STREAM or ``UNKNOWN: Stream removed``, never with rich details, while every status a mabeam server
    sends itself carries an ErrorInfo reason. (A servicer's unhandled exception, ``UNKNOWN: Unexpected
    <class ...>``, is an answer, not a lost connection.) Only idempotent calls may be retried on it.
    """
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        return False
    details = (error.details() if hasattr(error, "details") else "") or ""
    if code == grpc.StatusCode.UNKNOWN and details.startswith("Unexpected"):
        return False
    metadata = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    return not any(key == "grpc-status-details-bin" for key, _ in metadata or ())
