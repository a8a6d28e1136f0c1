"""The agentd error tree: every failure a sender or caller can see, each with a gRPC status code name.

The gRPC service and the SDK translate these one-to-one (``code`` is the name of a
``grpc.StatusCode``), so an error raised inside a worker process, sent over IPC as
``(code, message)`` and raised again in the main process keeps its type.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base class of agentd errors; ``code`` names the gRPC status code it maps to."""

    code = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(AgentError):
    """A request was malformed: an unknown agent type, bad start arguments, a bad name."""

    code = "INVALID_ARGUMENT"


class NoSuchAgent(AgentError):
    """The destination agent, name or supervisor does not exist (or no longer does)."""

    code = "NOT_FOUND"


class AlreadyExists(AgentError):
    """The name or child id is taken."""

    code = "ALREADY_EXISTS"


class MailboxFull(AgentError):
    """The destination mailbox is at capacity; the message was not delivered (never a silent drop)."""

    code = "RESOURCE_EXHAUSTED"


class CallTimeout(AgentError):
    """A call got no reply before its deadline."""

    code = "DEADLINE_EXCEEDED"


class AgentExited(AgentError):
    """The callee exited before it replied; ``reason`` is its exit reason."""

    code = "ABORTED"

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class CallNotHandled(AgentError):
    """The agent does not answer calls (its ``handle_call`` is not defined)."""

    code = "UNIMPLEMENTED"


class Unavailable(AgentError):
    """The runtime or the worker hosting the agent is not running (yet); retrying may help."""

    code = "UNAVAILABLE"


_BY_CODE: dict[str, type[AgentError]] = {
    cls.code: cls for cls in (InvalidArgument, NoSuchAgent, AlreadyExists, MailboxFull, CallTimeout,
                              AgentExited, CallNotHandled, Unavailable)
}


def error_from_code(code: str, message: str) -> AgentError:
    """Rebuild the typed error for a (code, message) pair that crossed a process boundary."""
    return _BY_CODE.get(code, AgentError)(message)
