"""Model calls inside a run: a :class:`~agentd.models.router.ModelSink` that writes a call into the run's event log.

Each delta becomes a ``model.delta`` event as it arrives (so a client streaming
the run — gRPC or SSE with ``Last-Event-ID`` — sees tokens live and resumes
mid-message from any seq), and the end of the call one ``model.receipt`` event
(provider, model, route and path taken, attempts, cache hit, request/prompt/output
hashes, usage, cost, latency, error class). A call that fails after streaming
leaves its partial message in the log (the deltas) and a receipt with
``partial: true`` and the error.

``append`` is the run executor's fenced append (``store.append(run_id, token,
events, now_ms)`` bound to its run and token), so a deposed executor cannot write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from agentd.models.router import Receipt
from agentd.models.types import TextDelta, ToolCallDelta
from agentd.runs.model import NewEvent, canonical_json

DELTA = "model.delta"
RECEIPT = "model.receipt"

Append = Callable[[Sequence[NewEvent]], Awaitable[Any]]


class RunLogSink:
    """Writes one run's model calls to its log; the events' payloads are canonical JSON."""

    def __init__(self, append: Append) -> None:
        self.append = append
        self._index: dict[str, int] = {}

    async def on_delta(self, call_id: str, delta: TextDelta | ToolCallDelta) -> None:
        """Append ``model.delta`` ``{"call_id", "index", "text"}`` or ``{"call_id", "index", "tool_call"}``."""
        index = self._index.get(call_id, 0)
        self._index[call_id] = index + 1
        payload: dict[str, Any] = {"call_id": call_id, "index": index}
        if isinstance(delta, TextDelta):
            payload["text"] = delta.text
        else:
            payload["tool_call"] = {"index": delta.index, "id": delta.id, "name": delta.name,
                                    "arguments": delta.arguments}
        await self.append([NewEvent(DELTA, canonical_json(payload))])

    async def on_receipt(self, call_id: str, receipt: Receipt) -> None:
        """Append ``model.receipt`` with the whole receipt and how many deltas the call streamed."""
        payload = {**receipt.to_dict(), "deltas": self._index.pop(call_id, 0)}
        await self.append([NewEvent(RECEIPT, canonical_json(payload))])


def message_from_events(payloads: Sequence[dict[str, Any]], call_id: str) -> str:
    """The text a call streamed, rebuilt from its ``model.delta`` payloads (a resumed reader's view)."""
    return "".join(p.get("text", "") for p in payloads if p.get("call_id") == call_id)
