"""The run state machine and the write planner (pure: no I/O, time passed in).

Every change to a run is one store transaction: the backend reads the run's row
(and, for a frame, its idempotency record), calls one ``plan_*`` function here,
and writes what the :class:`Plan` says. The planner decides everything — seqs,
hashes, idempotency, fencing, status — so both backends behave identically and
the rules are tested without a database.

The run's row is the projection of its log: :func:`chain` folds each new event into it.
Statuses: ``pending`` (no executor) → ``running`` (an executor claimed it) →
``completed`` | ``canceled`` | ``failed`` (terminal: nothing is appended after).

Fencing: an executor claims a run with a token (the create revision of its etcd
lease key, which grows with every new holder). A claim with a token not above the
run's current one is refused, and every executor append must carry the current
token, so a deposed executor can no longer write (:class:`ExecutorFenced`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agentd.runs.frames import APPROVAL_FRAME, FrameDecision, decide_frame
from agentd.runs.model import (
    CANCELED,
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    CheckpointRow,
    EventRow,
    ExecutorFenced,
    FrameRow,
    NewEvent,
    RunCanceling,
    RunConflict,
    RunNotFound,
    RunRow,
    RunSpec,
    RunTerminal,
    canonical_json,
)
from agentd.runs.model import TERMINAL as TERMINAL_STATUSES
from agentd.runs.upcasters import current_version
from mabeam.runchain import GENESIS, chain_hashes, payload_digest

#: Event types only the store writes (never an executor's append, never an agent's emit).
STORE_TYPES = frozenset({"run.started", "frame.received", "run.cancel_requested", "run.executor_acquired",
                         "run.executor_lost", "run.executor_released"})
#: Event types the executor appends on the run's behalf.
EXECUTOR_TYPES = frozenset({"frame.started", "frame.handled", "step.completed", "run.checkpoint",
                            "run.completed", "run.failed", "run.canceled"})
#: Prefixes an agent may not emit under: they belong to the runtime.
RESERVED_PREFIXES = ("run.", "frame.", "step.")
#: Events that end a run.
TERMINAL_EVENTS = {"run.completed": COMPLETED, "run.canceled": CANCELED, "run.failed": FAILED}
#: What an executor may still append once cancellation was requested: bookkeeping and the end (a step's
#: late result only as non-authoritative). Anything else is new work and is refused (RunCanceling).
AFTER_CANCEL = frozenset({"frame.handled", "run.canceled", "run.failed"})


@dataclass(frozen=True, slots=True)
class Plan:
    """What one transaction writes: the run's row after it, new events, an idempotency record, a checkpoint.

    ``created`` means the row is new (insert, not update); ``duplicate`` means nothing changes
    (an idempotent replay); ``seq`` is the event that answers the request.
    """

    row: RunRow
    events: tuple[EventRow, ...] = ()
    frame: FrameRow | None = None
    checkpoint: CheckpointRow | None = None
    created: bool = False
    duplicate: bool = False
    seq: int = 0


def request_hash(spec: RunSpec) -> str:
    """The fingerprint of a start request: the same request again is an idempotent replay."""
    material = canonical_json({"tenant": spec.tenant, "agent_type": spec.agent_type,
                               "input_policy": spec.input_policy, "labels": dict(spec.labels),
                               "input": spec.input})
    return hashlib.sha256(material.encode()).hexdigest()


def _payload(event: NewEvent) -> Any:
    return json.loads(event.payload)


def _fold(run: dict[str, Any], event: NewEvent, seq: int) -> None:
    """Fold one event into a run's fields (a dict: one RunRow is built per transaction, not per event —
    a new row per event was three quarters of an append's planning in ``python -m bench runs``)."""
    if run["status"] in TERMINAL_STATUSES:
        raise RunTerminal(f"run {run['run_id']!r} has ended ({run['status']}); nothing more is appended")
    type_ = event.type
    if not type_.startswith(RESERVED_PREFIXES):
        run["emitted"] += 1
    elif type_ == "frame.received":
        if _payload(event).get("type") != APPROVAL_FRAME:  # a decision for a waiting tool call, not input
            run["frames"] += 1
            run["frames_pending"] += 1
    elif type_ == "frame.handled":
        run["frames_pending"] = max(0, run["frames_pending"] - 1)
    elif type_ == "step.completed":
        run["steps"] += 1
    elif type_ == "run.checkpoint":
        run["checkpoints"] += 1
    elif type_ == "run.cancel_requested":
        run["cancel_requested"] = True
        run["cancel_seq"] = seq
    elif type_ == "run.executor_acquired":
        data = _payload(event)
        run.update(status=RUNNING, executor_token=int(data["token"]), executor_node=str(data["node_id"]),
                   executor_lease=int(data["lease_id"]))
    elif type_ == "run.executor_lost":
        run.update(status=PENDING, executor_node="", executor_lease=0, recoveries=run["recoveries"] + 1)
    elif type_ == "run.executor_released":
        run.update(status=PENDING, executor_node="", executor_lease=0)
    elif type_ in TERMINAL_EVENTS:
        run.update(status=TERMINAL_EVENTS[type_], executor_node="", executor_lease=0)
        data = _payload(event)
        if type_ == "run.completed":
            run["output"] = canonical_json(data.get("output") if isinstance(data, dict) else None)
        elif type_ == "run.failed" and isinstance(data, dict):
            run["error_class"] = str(data.get("error_class", ""))
            run["error_message"] = str(data.get("message", ""))


def chain(row: RunRow, events: Sequence[NewEvent], now_ms: int) -> tuple[RunRow, tuple[EventRow, ...]]:
    """Give each event its seq and hash, folding it into the row; the row's last_seq/last_hash advance."""
    if not events:
        return row, ()
    run = row._asdict()
    run_id = row.run_id
    seq = row.last_seq
    prev = row.last_hash
    emitted = 0
    out: list[EventRow] = []
    for event, (digest, hash_) in zip(events, chain_hashes(run_id, seq, prev, events), strict=True):
        seq += 1
        out.append(EventRow(run_id, seq, event.type, event.version, now_ms, event.payload, digest, prev, hash_))
        prev = hash_
        if event.type.startswith(RESERVED_PREFIXES):
            _fold(run, event, seq)
        elif run["status"] in TERMINAL_STATUSES:
            raise RunTerminal(f"run {run_id!r} has ended ({run['status']}); nothing more is appended")
        else:
            emitted += 1  # an agent's own event: only counted (most of an append; no dict update per event)
    run["emitted"] += emitted
    run["last_seq"] = seq
    run["last_hash"] = prev
    run["updated_ms"] = now_ms
    return RunRow(**run), tuple(out)


def _event(type_: str, payload: Any) -> NewEvent:
    return NewEvent(type_, canonical_json(payload), current_version(type_))


def _require(row: RunRow | None, run_id: str) -> RunRow:
    if row is None:
        raise RunNotFound(f"no run {run_id!r}")
    return row


def plan_start(spec: RunSpec, existing: RunRow | None, now_ms: int) -> Plan:
    """StartRun: a new run (run.started, and frame.received for the input), or the same run again."""
    fingerprint = request_hash(spec)
    if existing is not None:
        if existing.request_hash != fingerprint:
            raise RunConflict(f"run {spec.run_id!r} exists and was started with a different request "
                              f"(agent type {existing.agent_type!r}, tenant {existing.tenant!r}); "
                              "use a new run_id, or repeat the original request exactly")
        return Plan(existing, duplicate=True, seq=1)
    row = RunRow(run_id=spec.run_id, tenant=spec.tenant, agent_type=spec.agent_type,
                 input_policy=spec.input_policy, request_hash=fingerprint, labels=canonical_json(dict(spec.labels)),
                 status=PENDING, last_seq=0, last_hash=GENESIS, retention_floor=1, floor_prev_hash=GENESIS,
                 executor_token=0, executor_node="", executor_lease=0, cancel_requested=False, frames=0,
                 frames_pending=0, steps=0, recoveries=0, checkpoints=0, emitted=0, error_class="",
                 error_message="", output="", created_ms=now_ms, updated_ms=now_ms)
    events = [_event("run.started", {"agent_type": spec.agent_type, "tenant": spec.tenant,
                                     "input_policy": spec.input_policy, "labels": dict(spec.labels)})]
    frame = None
    if spec.input is not None:
        events.append(NewEvent("frame.received", canonical_json(
            {"frame_id": "input", "type": "input", "payload": json.loads(spec.input)})))
    row, rows = chain(row, events, now_ms)
    if spec.input is not None:
        frame = FrameRow(spec.run_id, "input", "input", payload_digest(spec.input), rows[1].seq)
    return Plan(row, rows, frame=frame, created=True, seq=1)


def plan_frame(row: RunRow | None, existing: FrameRow | None, run_id: str, frame_id: str, type_: str,
               payload: str, now_ms: int) -> Plan:
    """AppendFrame: accept (a frame.received event and its idempotency record) or replay."""
    run = _require(row, run_id)
    digest = payload_digest(payload)
    if decide_frame(run, existing, frame_id, type_, digest) is FrameDecision.DUPLICATE:
        assert existing is not None
        return Plan(run, duplicate=True, seq=existing.seq)
    body = canonical_json({"frame_id": frame_id, "type": type_, "payload": json.loads(payload)})
    new_row, rows = chain(run, [NewEvent("frame.received", body)], now_ms)
    return Plan(new_row, rows, frame=FrameRow(run_id, frame_id, type_, digest, rows[0].seq), seq=rows[0].seq)


def plan_cancel(row: RunRow | None, run_id: str, reason: str, now_ms: int) -> Plan:
    """CancelRun: append run.cancel_requested once; a replay (or an ended run) changes nothing."""
    run = _require(row, run_id)
    if run.terminal or run.cancel_requested:
        return Plan(run, duplicate=True, seq=run.cancel_seq)
    new_row, rows = chain(run, [_event("run.cancel_requested", {"reason": reason})], now_ms)
    return Plan(new_row, rows, seq=rows[0].seq)


def plan_claim(row: RunRow | None, run_id: str, token: int, node_id: str, lease_id: int, now_ms: int,
               max_recoveries: int) -> Plan:
    """An executor takes the run with a fresh token (it holds the run's etcd lease key).

    If the previous executor never released the run, it was lost: run.executor_lost is appended
    first and counts against the recovery budget; past the budget the run fails instead.
    """
    run = _require(row, run_id)
    if run.terminal:
        raise RunTerminal(f"run {run_id!r} has ended ({run.status})")
    if token <= run.executor_token:
        raise ExecutorFenced(f"run {run_id!r} is held with fencing token {run.executor_token}; "
                             f"token {token} is stale")
    events: list[NewEvent] = []
    if run.executor_node:
        events.append(_event("run.executor_lost", {"node_id": run.executor_node, "token": run.executor_token,
                                                   "lease_id": run.executor_lease}))
        if run.recoveries + 1 > max_recoveries:
            events.append(_event("run.failed", {
                "error_class": "recovery_budget_exhausted",
                "message": f"the run's executor was lost {run.recoveries + 1} times (budget {max_recoveries})"}))
            new_row, rows = chain(run, events, now_ms)
            return Plan(new_row._replace(executor_token=token), rows, seq=rows[-1].seq)
    events.append(_event("run.executor_acquired", {"node_id": node_id, "lease_id": lease_id, "token": token}))
    new_row, rows = chain(run, events, now_ms)
    return Plan(new_row, rows, seq=rows[-1].seq)


def check_fence(run: RunRow, token: int) -> None:
    """Raise ExecutorFenced unless ``token`` is the run's current executor's."""
    if run.terminal:
        raise RunTerminal(f"run {run.run_id!r} has ended ({run.status})")
    if token != run.executor_token or not run.executor_node:
        raise ExecutorFenced(f"run {run.run_id!r}: executor with token {token} was deposed (current token "
                             f"{run.executor_token}{', released' if not run.executor_node else ''}); "
                             "its appends are refused")


def _late_step(event: NewEvent) -> bool:
    if event.type != "step.completed":
        return False
    data = _payload(event)
    return isinstance(data, dict) and data.get("authoritative") is False


def plan_append(row: RunRow | None, run_id: str, token: int, events: Sequence[NewEvent], now_ms: int,
                checkpoint: str | None = None) -> Plan:
    """An executor's fenced append of events, optionally ending with a checkpoint of the agent's state."""
    run = _require(row, run_id)
    check_fence(run, token)
    for event in events:
        if event.type in STORE_TYPES:
            raise ValueError(f"{event.type} is written by the store, not by an executor")
        if run.cancel_requested and event.type not in AFTER_CANCEL and not _late_step(event):
            raise RunCanceling(f"run {run_id!r} is being canceled: {event.type} is new work and was refused")
    if run.cancel_requested and checkpoint is not None:
        raise RunCanceling(f"run {run_id!r} is being canceled: no new checkpoint")
    batch = list(events)
    if checkpoint is not None:
        batch.append(_event("run.checkpoint", {"state_sha256": payload_digest(checkpoint),
                                               "bytes": len(checkpoint.encode())}))
    new_row, rows = chain(run, batch, now_ms)
    saved = None
    if checkpoint is not None:
        saved = CheckpointRow(run_id, rows[-1].seq, checkpoint, now_ms)
    return Plan(new_row, rows, checkpoint=saved, seq=rows[-1].seq if rows else run.last_seq)


def plan_release(row: RunRow | None, run_id: str, token: int, now_ms: int) -> Plan:
    """The executor hands the run back (graceful shutdown): run.executor_released; no recovery is counted."""
    run = _require(row, run_id)
    if run.terminal:
        return Plan(run, duplicate=True)
    check_fence(run, token)
    new_row, rows = chain(run, [_event("run.executor_released", {"node_id": run.executor_node, "token": token})],
                          now_ms)
    return Plan(new_row, rows, seq=rows[0].seq)
