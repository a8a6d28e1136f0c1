"""Typed data-plane errors: one exception tree keyed by gRPC status code.

Every failure the data plane reports to a sender — locally raised or carried
back in an ERROR envelope — is a :class:`DataPlaneError` whose ``code`` is a
``grpc.StatusCode``, so the gRPC face translates it in one place and clients in
any language see the same codes.
"""

from __future__ import annotations

import grpc

_BY_VALUE: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def status_from_int(value: int) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` for a numeric code (UNKNOWN for values gRPC does not define)."""
    return _BY_VALUE.get(value, grpc.StatusCode.UNKNOWN)


class DataPlaneError(Exception):
    """A typed failure of a send or call; ``code`` is the gRPC status code."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str = "", code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message

    @property
    def code_value(self) -> int:
        """The numeric status code, as carried in ``Envelope.error_code``."""
        return int(self.code.value[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}: {self.message!r})"


class NotFound(DataPlaneError):
    """The destination name, agent or group does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(DataPlaneError):
    """The receiver's mailbox (or the sender's outbound queue) is over its limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(DataPlaneError):
    """The destination node is down or left the cluster."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(DataPlaneError):
    """A call got no reply before its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class MessageTooLarge(DataPlaneError):
    """The payload is above the configured maximum message size."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidArgument(DataPlaneError):
    """A malformed request (bad destination, channel or option)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


_CLASSES: dict[grpc.StatusCode, type[DataPlaneError]] = {
    cls.code: cls for cls in (NotFound, ResourceExhausted, Unavailable, DeadlineExceeded)
}


def error_from_code(code_value: int, message: str) -> DataPlaneError:
    """Rebuild the typed error an ERROR envelope carries."""
    code = status_from_int(code_value)
    cls = _CLASSES.get(code, DataPlaneError)
    return cls(message, code)
