"""The records of the runs store and the errors of durable runs (pure: no I/O).

A row of each table is an immutable record; the store backends read and write
exactly these fields. The run and event rows are named tuples rather than frozen
dataclasses: an append builds one run row and a batch of event rows per
transaction, and a frozen dataclass costs four times a tuple to build and must be
converted to a tuple for the driver (together a fifth of an append's time in
``python -m bench runs``). Errors carry the gRPC status code name, the
``mabeam.v1.ErrorReason`` name and the HTTP status they map to, so the gRPC
service and the HTTP face translate them in one place each.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

#: Run statuses; the last three are terminal.
PENDING, RUNNING, COMPLETED, CANCELED, FAILED = "pending", "running", "completed", "canceled", "failed"
STATUSES = (PENDING, RUNNING, COMPLETED, CANCELED, FAILED)
TERMINAL = frozenset({COMPLETED, CANCELED, FAILED})

#: What a frame arriving while the agent is busy does.
POLICIES = ("enqueue", "reject", "interrupt")


def canonical_json(value: Any) -> str:
    """The one JSON text of a value that payload digests and frame dedupe compare (sorted keys, compact)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class RunRow(NamedTuple):
    """A run's row: its identity, the projection of its log (status, counters) and its executor."""

    run_id: str
    tenant: str
    agent_type: str
    input_policy: str
    request_hash: str
    labels: str  # canonical JSON object
    status: str
    last_seq: int
    last_hash: str
    retention_floor: int
    floor_prev_hash: str
    executor_token: int
    executor_node: str
    executor_lease: int
    cancel_requested: bool
    frames: int
    frames_pending: int
    steps: int
    recoveries: int
    checkpoints: int
    emitted: int
    error_class: str
    error_message: str
    output: str  # canonical JSON; "" until completed
    created_ms: int
    updated_ms: int
    cancel_seq: int = 0  # the run.cancel_requested event (0: none); migration 0002

    @property
    def terminal(self) -> bool:
        """True once the run has ended."""
        return self.status in TERMINAL

    def labels_dict(self) -> dict[str, str]:
        """The labels as a dict."""
        value = json.loads(self.labels) if self.labels else {}
        return {str(k): str(v) for k, v in value.items()}


#: Column order of the runs table (the backends use it for inserts, updates and reads).
RUN_COLUMNS: tuple[str, ...] = RunRow._fields


class EventRow(NamedTuple):
    """One stored event. ``payload`` is None once retention pruned it."""

    run_id: str
    seq: int
    type: str
    version: int
    time_ms: int
    payload: str | None
    payload_sha256: str
    prev_hash: str
    hash: str

    def payload_value(self) -> Any:
        """The payload decoded (None when pruned)."""
        return None if self.payload is None else json.loads(self.payload)


EVENT_COLUMNS: tuple[str, ...] = EventRow._fields


@dataclass(frozen=True, slots=True)
class FrameRow:
    """An accepted frame's idempotency record: unique per (run_id, frame_id)."""

    run_id: str
    frame_id: str
    type: str
    payload_sha256: str
    seq: int  # its frame.received event


FRAME_COLUMNS = tuple(FrameRow.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    """A run's checkpointed agent state, taken at event ``seq`` (its run.checkpoint event)."""

    run_id: str
    seq: int
    state: str  # canonical JSON
    time_ms: int


CHECKPOINT_COLUMNS = tuple(CheckpointRow.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append: its type, payload (canonical JSON) and schema version."""

    type: str
    payload: str = "null"
    version: int = 1


@dataclass(frozen=True, slots=True)
class RunSpec:
    """What StartRun asks for, validated; ``request_hash`` fingerprints it for idempotency."""

    run_id: str
    tenant: str
    agent_type: str
    input_policy: str
    labels: Mapping[str, str] = field(default_factory=dict)
    input: str | None = None  # canonical JSON of the input frame's payload, if any


# --- errors -----------------------------------------------------------------------------------


class RunError(Exception):
    """A durable-runs error: ``code`` (gRPC status name), ``reason`` (ErrorReason name), ``http_status``."""

    code = "UNKNOWN"
    reason = ""
    http_status = 500

    def __init__(self, message: str, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidRunRequest(RunError):
    """A field failed validation; ``violations`` maps each bad field to what is wrong."""

    code, reason, http_status = "INVALID_ARGUMENT", "INVALID_FIELD", 400

    def __init__(self, violations: Mapping[str, str]) -> None:
        super().__init__("invalid request: " + "; ".join(f"{k}: {v}" for k, v in violations.items()))
        self.violations = dict(violations)


class RunNotFound(RunError):
    """No run with this id."""

    code, reason, http_status = "NOT_FOUND", "RUN_NOT_FOUND", 404


class RunConflict(RunError):
    """The run id exists with a different start request."""

    code, reason, http_status = "ALREADY_EXISTS", "RUN_CONFLICT", 409


class FrameConflict(RunError):
    """The frame id was accepted before with a different type or payload."""

    code, reason, http_status = "ALREADY_EXISTS", "FRAME_CONFLICT", 409


class StaleCursor(RunError):
    """The cursor is below the retention floor; metadata["retention_floor"] is the floor."""

    code, reason, http_status = "FAILED_PRECONDITION", "STALE_CURSOR", 410

    def __init__(self, cursor: int, floor: int) -> None:
        super().__init__(f"cursor {cursor} is below the retention floor: events before seq {floor} were "
                         f"removed; resume from cursor {floor - 1} (or read the run's snapshot)",
                         {"retention_floor": str(floor)})
        self.floor = floor


class RunTerminal(RunError):
    """The run has ended (or is being canceled) and takes no more input or work."""

    code, reason, http_status = "FAILED_PRECONDITION", "RUN_TERMINAL", 409


class RunCanceling(RunTerminal):
    """Cancellation was requested: the run takes no new work (frames, steps, emits, checkpoints, completion)."""


class RunBusy(RunError):
    """Input policy "reject": a frame is still being handled."""

    code, reason, http_status = "FAILED_PRECONDITION", "RUN_BUSY", 409


class LeaseHeld(RunError):
    """Another executor holds the run's lease."""

    code, reason, http_status = "FAILED_PRECONDITION", "LEASE_HELD", 409


class ExecutorFenced(RunError):
    """The executor's fencing token is no longer current: a newer executor took the run over."""

    code, reason, http_status = "FAILED_PRECONDITION", "EXECUTOR_FENCED", 409


class RunsUnavailable(RunError):
    """The store or etcd cannot be reached; retry later."""

    code, reason, http_status = "UNAVAILABLE", "RUNS_UNAVAILABLE", 503


class ModelsNotConfigured(RunError):
    """A run asked for a model call on an agentd with no ``[models]`` configuration."""

    code, reason, http_status = "FAILED_PRECONDITION", "PROVIDER_UNAVAILABLE", 409


class ApprovalNotFound(RunError):
    """A decision named a tool call the run never asked a human about."""

    code, reason, http_status = "NOT_FOUND", "APPROVAL_NOT_FOUND", 404


class ApprovalDecided(RunError):
    """The tool call was already decided the other way; a decision is final."""

    code, reason, http_status = "FAILED_PRECONDITION", "APPROVAL_DECIDED", 409


class ApprovalExpired(RunError):
    """The approval's deadline passed before the decision; the call counted as denied."""

    code, reason, http_status = "FAILED_PRECONDITION", "APPROVAL_EXPIRED", 409


class AgentCallFailed(RunError):
    """A run's call to an agent failed (the callee's error code is in ``metadata["code"]``)."""

    code, reason, http_status = "FAILED_PRECONDITION", "CALL_FAILED", 409
