"""A Server-Sent Events decoder (bytes in, events out) for streaming provider answers; pure, no I/O.

Follows the WHATWG event-stream rules the providers use: lines end with LF, CRLF
or CR; ``data:`` lines of one event are joined with LF; a blank line dispatches;
lines starting with ``:`` are comments; a field's value loses one leading space.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event: its type (``message`` when unnamed), data and id."""

    event: str
    data: str
    id: str = ""


class SSEDecoder:
    """Feed chunks of bytes as they arrive; get the complete events they finish."""

    def __init__(self, max_event_bytes: int = 8 * 1024 * 1024) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []
        self._id = ""
        self._size = 0
        self.max_event_bytes = max_event_bytes

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Decode a chunk; ValueError when one event grows past ``max_event_bytes``."""
        self._buffer += chunk
        events: list[SSEEvent] = []
        while True:
            newline, carriage = self._buffer.find(b"\n"), self._buffer.find(b"\r")
            cut = newline if carriage < 0 else carriage if newline < 0 else min(newline, carriage)
            if cut < 0:
                if len(self._buffer) > self.max_event_bytes:
                    raise ValueError("server-sent event too large")
                return events
            if self._buffer[cut] == 13 and cut + 1 == len(self._buffer):
                return events  # a CR at the end may be half of CRLF: wait for the next byte
            line = self._buffer[:cut]
            skip = 2 if self._buffer[cut:cut + 2] == b"\r\n" else 1
            self._buffer = self._buffer[cut + skip:]
            event = self._line(line.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            if not self._data and not self._event:
                return None
            event = SSEEvent(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data, self._size = "", [], 0
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._size += len(value)
            if self._size > self.max_event_bytes:
                raise ValueError("server-sent event too large")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None
