"""Typed data-plane errors: the data plane's branch of the one error tree (:class:`mabeam.errors.ServiceError`).

Every failure the data plane reports to a sender — locally raised or carried
back in an ERROR envelope — is a :class:`DataPlaneError` with a gRPC status
``code`` and an ErrorReason ``reason``, so the gRPC face answers it like any
other service error (through the error interceptor) and clients in any
language see the same codes. An ERROR envelope carries only the numeric code
and the message; the receiving side rebuilds the class (and so the reason)
from the code.
"""

from __future__ import annotations

import grpc

from mabeam.errors import ServiceError, code_from_value


class DataPlaneError(ServiceError):
    """A typed failure of a send or call; ``code`` is the gRPC status code, ``reason`` its ErrorReason."""

    def __init__(self, message: str = "", code: grpc.StatusCode | None = None, reason: str = "") -> None:
        super().__init__(code, message, reason)


class NotFound(DataPlaneError):
    """The destination name, agent or group does not exist."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_REGISTERED"


class ResourceExhausted(DataPlaneError):
    """The receiver's mailbox (or the sender's outbound queue) is over its limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "MAILBOX_FULL"


class QuotaExceeded(ResourceExhausted):
    """The sending tenant is over its data-plane rate quota on this node (messages or bytes per second)."""

    reason = "QUOTA_EXCEEDED"

    def __init__(self, message: str, tenant: str, quota: str, limit: float) -> None:
        super().__init__(message)
        self.metadata = {"tenant": tenant, "quota": quota, "limit": f"{limit:g}"}


class Unavailable(DataPlaneError):
    """The destination node is down or left the cluster."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "PEER_UNAVAILABLE"


class Detached(Unavailable):
    """This process is not attached to its meshd right now (it was detached, or meshd restarted).

    The endpoint re-attaches by itself with backoff and registers its names and groups again; meanwhile
    sends and calls fail fast with this error (UNAVAILABLE, reason ``DETACHED``): retry shortly.
    """

    reason = "DETACHED"


class DeadlineExceeded(DataPlaneError):
    """A call got no reply before its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "CALL_TIMEOUT"


class MessageTooLarge(DataPlaneError):
    """The payload is above the configured maximum message size."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "TOO_LARGE"


class InvalidArgument(DataPlaneError):
    """A malformed request (bad destination, channel or option)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_FIELD"


_CLASSES: dict[grpc.StatusCode, type[DataPlaneError]] = {
    cls.code: cls for cls in (NotFound, ResourceExhausted, Unavailable, DeadlineExceeded, InvalidArgument)
}


def error_from_code(code_value: int, message: str) -> DataPlaneError:
    """Rebuild the typed error an ERROR envelope carries."""
    code = code_from_value(code_value)
    cls = _CLASSES.get(code, DataPlaneError)
    return cls(message, code)
