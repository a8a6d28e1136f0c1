"""The mechanisms' exception tree: one base, a few precise kinds, each naming the problem.

Every rejection leaves the mechanism's state exactly as it was, so a caller may
log the error and carry on with the next event.

    MechanismError
    ├── InvalidConfig     the constructor's configuration is malformed
    ├── InvalidEvent      the event is malformed or not allowed now (below reserve, unknown bidder, ...)
    ├── MechanismClosed   the mechanism (or the round the event targets) no longer accepts input
    ├── ProblemTooLarge   the instance is past a configured size or time limit
    └── EscrowRefused     the event is valid but cannot be accepted when funds are held in escrow
"""

from __future__ import annotations


class MechanismError(Exception):
    """Base of every error a mechanism raises; ``problem`` says what was wrong in one sentence."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class InvalidConfig(MechanismError):
    """The configuration given to a mechanism's constructor is invalid."""


class InvalidEvent(MechanismError):
    """The event is malformed, or valid in form but not allowed in the current state."""


class MechanismClosed(MechanismError):
    """The mechanism, or the round or deadline the event targets, has closed."""


class ProblemTooLarge(MechanismError):
    """The instance exceeds a configured size limit, or the solver ran out of its time limit."""


class EscrowRefused(MechanismError):
    """The event cannot be accepted on an escrow instance (e.g. an unpriced buy order: nothing bounds it)."""
