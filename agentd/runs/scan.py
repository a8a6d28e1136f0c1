"""The executor's reading of a run's log (pure): pending frames, the frame in progress, cancel, the end,
and what a replay of the frame in progress must return.

The executor folds every event it reads into a :class:`LogScan` (its own appends
included, since it reads them back), and asks it what to do next. After a crash the
new executor scans the log from the retention floor and arrives at the same
picture: frames received and not handled are pending, in seq order; a frame with a
``frame.started`` but no ``frame.handled`` was in progress, and the effects recorded
since its ``frame.started`` are its replay.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from agentd.runs.frames import APPROVAL_FRAME, APPROVAL_PREFIX
from agentd.runs.model import EventRow
from agentd.runs.state import RESERVED_PREFIXES, TERMINAL_EVENTS


@dataclass(frozen=True, slots=True)
class PendingFrame:
    """A frame the agent has not finished handling."""

    seq: int
    frame_id: str
    type: str
    payload: Any


@dataclass
class Replay:
    """Effects recorded for one frame: emits (type, payload, seq), checkpoints (state sha256, seq), steps."""

    emits: list[tuple[str, str, int]] = field(default_factory=list)
    checkpoints: list[tuple[str, int]] = field(default_factory=list)
    steps: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The replay as the worker's run context reads it."""
        return {"emits": [list(e) for e in self.emits], "checkpoints": [list(c) for c in self.checkpoints],
                "steps": self.steps}


#: Appended by the executor when a tool call's approval deadline passed first (the first word wins).
APPROVAL_EXPIRED = "tool.approval_expired"


def _payload(event: EventRow) -> Any:
    return json.loads(event.payload) if event.payload is not None else None


@dataclass
class LogScan:
    """What the log says about a run's execution so far (see the module docstring)."""

    cursor: int = 0
    pending: dict[int, PendingFrame] = field(default_factory=dict)
    #: frame seq -> seq of its frame.started
    started: dict[int, int] = field(default_factory=dict)
    #: Effects recorded since each started frame's frame.started.
    replays: dict[int, Replay] = field(default_factory=dict)
    cancel_reason: str | None = None
    terminal: str = ""
    #: tool_call_id -> the first word on it: {"approved", "note", "seq"} (a decision frame or an expiry).
    approvals: dict[str, dict[str, Any]] = field(default_factory=dict)

    def feed(self, event: EventRow) -> None:
        """Fold one event (in seq order) into the picture."""
        self.cursor = event.seq
        type_ = event.type
        if type_ == "frame.received":
            data = _payload(event) or {}
            if data.get("type") == APPROVAL_FRAME:
                decision = data.get("payload") or {}
                call_id = str(data.get("frame_id", ""))[len(APPROVAL_PREFIX):]
                self.approvals.setdefault(call_id, {"approved": bool(decision.get("approved")),
                                                    "note": str(decision.get("note", "")), "seq": event.seq})
                return
            self.pending[event.seq] = PendingFrame(event.seq, str(data.get("frame_id", "")),
                                                   str(data.get("type", "")), data.get("payload"))
        elif type_ == "frame.started":
            frame_seq = int((_payload(event) or {}).get("frame_seq", 0))
            self.started[frame_seq] = event.seq
            self.replays[frame_seq] = Replay()
        elif type_ == "frame.handled":
            frame_seq = int((_payload(event) or {}).get("frame_seq", 0))
            self.pending.pop(frame_seq, None)
            self.started.pop(frame_seq, None)
            self.replays.pop(frame_seq, None)
        elif type_ == "run.cancel_requested":
            self.cancel_reason = str((_payload(event) or {}).get("reason", ""))
        elif type_ in TERMINAL_EVENTS:
            self.terminal = type_
        elif type_ == APPROVAL_EXPIRED:
            call_id = str((_payload(event) or {}).get("tool_call_id", ""))
            self.approvals.setdefault(call_id, {"approved": False, "note": "expired", "seq": event.seq})
        elif type_ == "step.completed":
            data = _payload(event) or {}
            replay = self.replays.get(int(data.get("frame_seq", 0)))
            if replay is not None and data.get("authoritative", True):
                replay.steps[str(data.get("key"))] = data.get("result")
        elif type_ == "run.checkpoint":
            replay = self._in_progress_replay()
            if replay is not None:
                replay.checkpoints.append((str((_payload(event) or {}).get("state_sha256", "")), event.seq))
        elif not type_.startswith(RESERVED_PREFIXES) and event.payload is not None:
            replay = self._in_progress_replay()
            if replay is not None:
                replay.emits.append((type_, event.payload, event.seq))

    def _in_progress_replay(self) -> Replay | None:
        # Frames are handled one at a time: the effects belong to the latest started frame.
        if not self.started:
            return None
        return self.replays.get(max(self.started, key=lambda f: self.started[f]))

    @property
    def canceled(self) -> bool:
        """True once cancellation was requested."""
        return self.cancel_reason is not None

    def next_frame(self) -> PendingFrame | None:
        """The frame to handle next: the one in progress, else the oldest pending."""
        if not self.pending:
            return None
        return self.pending[min(self.pending)]

    def newer_than(self, frame: PendingFrame) -> bool:
        """True when a frame arrived after ``frame`` (what the "interrupt" policy reacts to)."""
        return any(seq > frame.seq for seq in self.pending)

    def replay_for(self, frame: PendingFrame) -> Replay:
        """The effects already recorded for ``frame`` (empty when it never started)."""
        return self.replays.get(frame.seq) or Replay()
