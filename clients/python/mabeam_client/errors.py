"""The SDK's error tree: one exception class per gRPC status code, with the server's rich details.

Every failed call raises a :class:`MabeamError` subclass carrying the status
``code``, the server's ``message``, the ``reason`` (a mabeam ErrorReason name
from google.rpc.ErrorInfo), ``field_violations`` (field → what is wrong) and
``retry_after`` seconds when the server suggests a retry, and the ErrorInfo
``metadata`` (e.g. ``leader`` on a WRONG_NODE answer from a standby). :func:`translate`
is the one place gRPC errors become these.
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2


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


class InvalidArgument(MabeamError):
    """The request is malformed; ``field_violations`` says which fields and why."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(MabeamError):
    """The name, group, tenant or agent does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(MabeamError):
    """The name (or id) is taken."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(MabeamError):
    """The request does not fit the current state (e.g. the name is owned by another node)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(MabeamError):
    """A limit was hit (mailbox full, message too large); back off."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(MabeamError):
    """The service (or etcd behind it) cannot be reached; retry after ``retry_after``."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(MabeamError):
    """No answer before the deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class PermissionDenied(MabeamError):
    """The caller may not do this (tenant isolation, policy)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Aborted(MabeamError):
    """The operation was aborted (e.g. a watcher fell behind); retry it."""

    code = grpc.StatusCode.ABORTED


_BY_CODE = {cls.code: cls for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition,
                                      ResourceExhausted, Unavailable, DeadlineExceeded, PermissionDenied, Aborted)}


def translate(error: grpc.RpcError) -> MabeamError:
    """The SDK exception for a gRPC error, with the rich details the server attached."""
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
    cls = _BY_CODE.get(code, MabeamError)
    return cls(message, reason, violations, retry, code=code, metadata=info_metadata)
