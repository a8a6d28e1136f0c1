"""Typed data-plane errors: the data plane's branch of the one error tree (:class:`mabeam.errors.ServiceError`).

Every failure the data plane reports to a sender — locally raised or carried
back in an ERROR envelope — is a :class:`DataPlaneError` with a gRPC status
``code`` and an ErrorReason ``reason``, so the gRPC face answers it like any
other service error (through the error interceptor) and clients in any
language see the same codes. An ERROR envelope carries the numeric code and the
message, and (since ``error_reason`` / ``error_metadata`` / ``retry_after_ms``) the
reason, the details and a throttle; the receiving side rebuilds the class from
the reason when it knows it, else from the code (:func:`error_from_envelope`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
    """The sending tenant is over its data-plane rate quota on this node (messages or bytes per second).

    ``metadata``: ``tenant``, ``quota`` (``max_messages_per_second`` or ``max_bytes_per_second``), ``limit``
    (per second) and, when known, ``used``. ``retry_after_s``: the throttle — send nothing for that long,
    then at most ``limit`` per second (an attached endpoint does this by itself, see
    :class:`mabeam.dataplane.attach.AttachedEndpoint`).
    """

    reason = "QUOTA_EXCEEDED"

    def __init__(self, message: str, tenant: str = "", quota: str = "", limit: float = 0.0,
                 used: float | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.metadata = {"tenant": tenant, "quota": quota, "limit": f"{limit:g}"}
        if used is not None:
            self.metadata["used"] = f"{used:g}"
        self.retry_after_s = retry_after_s


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


_REASONS: dict[str, type[DataPlaneError]] = {cls.reason: cls for cls in (QuotaExceeded, Detached)}


def error_from_code(code_value: int, message: str, reason: str = "", metadata: Mapping[str, str] | None = None,
                    retry_after_ms: int = 0) -> DataPlaneError:
    """Rebuild the typed error an ERROR envelope carries (code, message and, when set, reason, details, throttle)."""
    code = code_from_value(code_value)
    cls = _REASONS.get(reason) or _CLASSES.get(code, DataPlaneError)
    if cls.code != code:
        cls = _CLASSES.get(code, DataPlaneError)
    error = cls(message) if cls is QuotaExceeded else cls(message, code)
    if metadata:
        error.metadata = dict(metadata)
    if retry_after_ms:
        error.retry_after_s = retry_after_ms / 1000
    return error


def error_from_envelope(env: Any) -> DataPlaneError:
    """The typed error of an ERROR envelope (``mabeam.v1.Envelope``), with its reason, details and throttle."""
    return error_from_code(env.error_code, env.error_message, env.error_reason, env.error_metadata,
                           env.retry_after_ms)


def fill_envelope(env: Any, error: DataPlaneError) -> None:
    """Write ``error`` into an ERROR envelope: code, message, reason, details and throttle (``retry_after_ms``)."""
    env.error_code = error.code_value
    env.error_message = error.message
    if error.reason:
        env.error_reason = error.reason
    for key, value in error.metadata.items():
        env.error_metadata[key] = value
    if error.retry_after_s:
        env.retry_after_ms = max(1, min(0xFFFFFFFF, int(error.retry_after_s * 1000 + 0.999)))
