"""The agentd error tree: every failure a sender or caller can see — agentd's branch of the one error tree.

Each class is a :class:`mabeam.errors.ServiceError` with a gRPC status ``code``
and an ErrorReason ``reason``, so the gRPC service just raises it (the error
interceptor answers with its status) and the SDK raises the matching class. An
error raised inside a worker process crosses IPC as ``(code name, message)``
and is raised again in the main process with the same type
(:func:`error_from_code`).
"""

from __future__ import annotations

import grpc

from mabeam.errors import ServiceError


class AgentError(ServiceError):
    """Base class of agentd errors; ``code`` is the gRPC status code it maps to."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(code, message)


class InvalidArgument(AgentError):
    """A request was malformed: an unknown agent type, bad start arguments, a bad name."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_FIELD"


class NoSuchAgent(AgentError):
    """The destination agent, name or supervisor does not exist (or no longer does)."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "NO_SUCH_AGENT"


class AlreadyExists(AgentError):
    """The name or child id is taken."""

    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "NAME_TAKEN"


class MailboxFull(AgentError):
    """The destination mailbox is at capacity; the message was not delivered (never a silent drop)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "MAILBOX_FULL"


class CallTimeout(AgentError):
    """A call got no reply before its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "CALL_TIMEOUT"


class AgentExited(AgentError):
    """The callee exited before it replied; ``exit_reason`` is its exit reason."""

    code = grpc.StatusCode.ABORTED
    reason = "AGENT_EXITED"

    def __init__(self, message: str, exit_reason: str = "") -> None:
        super().__init__(message)
        self.exit_reason = exit_reason


class CallNotHandled(AgentError):
    """The agent does not answer calls (its ``handle_call`` is not defined)."""

    code = grpc.StatusCode.UNIMPLEMENTED
    reason = "CALL_NOT_HANDLED"


class Unavailable(AgentError):
    """The runtime or the worker hosting the agent is not running (yet); retrying may help."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "RUNTIME_UNAVAILABLE"


class Internal(AgentError):
    """An agent or the runtime failed unexpectedly (the worker logged the cause)."""

    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL_ERROR"


_BY_CODE: dict[str, type[AgentError]] = {
    cls.code.name: cls for cls in (InvalidArgument, NoSuchAgent, AlreadyExists, MailboxFull, CallTimeout,
                                   AgentExited, CallNotHandled, Unavailable, Internal)
}


def error_from_code(code: str, message: str) -> AgentError:
    """Rebuild the typed error for a (code name, message) pair that crossed a process boundary."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return AgentError(message, getattr(grpc.StatusCode, code, grpc.StatusCode.UNKNOWN))
    return cls(message)
