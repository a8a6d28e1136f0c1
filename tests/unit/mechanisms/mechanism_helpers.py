"""Shared helpers for the mechanism tests: hypothesis settings and a state-unchanged check."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from pydantic import BaseModel

from coordinator.mechanisms.base import Mechanism
from coordinator.mechanisms.errors import MechanismError

# Explicit per-test settings rather than a global profile, so other suites sharing the session are unaffected;
# deadline=None because the machine is shared and timing-based failures would be flaky.
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def plain(value: Any) -> Any:
    """A structural copy of a value: models, containers and helper objects become plain data."""
    if isinstance(value, BaseModel):
        return (type(value).__name__, plain(value.model_dump()))
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | deque):
        return [plain(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return (type(value).__name__, plain(vars(value)))
    return value


def state_of(mechanism: Mechanism[Any, Any]) -> Any:
    """Everything the mechanism holds, as plain data, for before/after comparisons."""
    return plain(vars(mechanism))


def rejects(mechanism: Mechanism[Any, Any], event: Any, now: int, error: type[MechanismError],
            match: str | None = None) -> MechanismError:
    """Assert the event raises ``error`` and leaves the mechanism's state exactly as it was."""
    before = state_of(mechanism)
    with pytest.raises(error, match=match) as caught:
        mechanism.apply(event, now)
    assert state_of(mechanism) == before
    return caught.value


def try_apply(mechanism: Mechanism[Any, Any], event: Any | Mapping[str, Any], now: int) -> bool:
    """Apply the event; False (state unchanged) when it is rejected."""
    before = state_of(mechanism)
    try:
        mechanism.apply(event, now)
    except MechanismError:
        assert state_of(mechanism) == before
        return False
    return True
