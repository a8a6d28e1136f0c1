"""The frame dedupe decision (pure): accept, replay, or refuse an incoming frame.

A frame is identified by ``(run_id, frame_id)``. The same id with the same type
and payload digest is a replay and changes nothing, even after the run ended;
the same id with other content is a conflict. A new frame is refused when the
run has ended or is being canceled, and, under the "reject" input policy, while
an earlier frame is still pending.

A human's decision on a tool call (ApproveToolCall / DenyToolCall) is a frame of
type :data:`APPROVAL_FRAME` with frame id ``approval:<tool_call_id>``: durable and
idempotent like any input, but answered to the tool call that waits for it, not
delivered to the handler — so no input policy holds it back (the handler is busy
waiting for exactly this frame).
"""

from __future__ import annotations

from enum import Enum

from agentd.runs.model import FrameConflict, FrameRow, RunBusy, RunRow, RunTerminal

#: The frame type of a decision on a tool call; clients send it only through ApproveToolCall/DenyToolCall.
APPROVAL_FRAME = "tool.approval"
APPROVAL_PREFIX = "approval:"


def approval_frame_id(tool_call_id: str) -> str:
    """The frame id of the decision on ``tool_call_id`` (one decision per call: a second one conflicts)."""
    return APPROVAL_PREFIX + tool_call_id


class FrameDecision(Enum):
    """What to do with an incoming frame."""

    ACCEPT = "accept"
    DUPLICATE = "duplicate"


def decide_frame(run: RunRow, existing: FrameRow | None, frame_id: str, type_: str,
                 payload_sha256: str) -> FrameDecision:
    """ACCEPT or DUPLICATE; raises FrameConflict, RunTerminal or RunBusy."""
    if existing is not None:
        if existing.type == type_ and existing.payload_sha256 == payload_sha256:
            return FrameDecision.DUPLICATE
        raise FrameConflict(f"frame {frame_id!r} of run {run.run_id!r} was accepted before with a different "
                            f"{'type' if existing.type != type_ else 'payload'} (type {existing.type!r}, "
                            f"event {existing.seq}); use a new frame_id for new input")
    if run.terminal:
        raise RunTerminal(f"run {run.run_id!r} has ended ({run.status}); it takes no more input")
    if run.cancel_requested:
        raise RunTerminal(f"run {run.run_id!r} is being canceled; it takes no more input")
    if run.input_policy == "reject" and run.frames_pending > 0 and type_ != APPROVAL_FRAME:
        raise RunBusy(f"run {run.run_id!r} is still handling {run.frames_pending} frame(s) and its input "
                      f"policy is 'reject'; send the frame again once it is idle")
    return FrameDecision.ACCEPT
