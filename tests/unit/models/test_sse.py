"""The SSE decoder: events split anywhere, every line ending, comments, multi-line data."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agentd.models.sse import SSEDecoder, SSEEvent

STREAM = (b": keep-alive\r\n\r\ndata: {\"a\": 1}\r\n\r\nevent: message_delta\ndata: x\ndata: y\n\n"
          b"id: 7\rdata:[DONE]\r\r\n")
EXPECTED = [SSEEvent("message", '{"a": 1}'), SSEEvent("message_delta", "x\ny"), SSEEvent("message", "[DONE]", "7")]


def test_whole_stream() -> None:
    assert SSEDecoder().feed(STREAM) == EXPECTED


@given(st.lists(st.integers(0, len(STREAM)), max_size=10))
def test_split_anywhere_gives_the_same_events(cuts: list[int]) -> None:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    last = 0
    for cut in sorted(cuts) + [len(STREAM)]:
        events += decoder.feed(STREAM[last:cut])
        last = cut
    assert events == EXPECTED
