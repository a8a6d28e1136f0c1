"""Envelope validation: every malformed multipart message is a counted FrameError, never a crash."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mabeam.dataplane import envelope as wire
from mabeam.dataplane.errors import InvalidArgument
from mabeam.v1 import dataplane_pb2 as pb


def _env(**fields: object) -> bytes:
    base = {"version": 1, "id": 7, "kind": wire.CAST, "channel": wire.NORMAL}
    base.update(fields)
    return pb.Envelope(**base).SerializeToString()  # type: ignore[arg-type]


def test_round_trip_keeps_envelopes_and_payloads() -> None:
    # Header built by concatenation decodes as the protobuf Batch it claims to be.
    prefix = wire.batch_prefix("node-a")
    header = wire.encode_batch(prefix, [_env(id=1), _env(id=2, kind=wire.CALL)])
    batch, payloads = wire.decode_frames([header, b"p1", b"p2"])
    assert batch.sender_node == "node-a"
    assert [e.id for e in batch.envelopes] == [1, 2]
    assert list(payloads) == [b"p1", b"p2"]


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([], "frame_count"),
        ([b"only-header"], "frame_count"),
        ([b"\xff\xff\xff", b""], "bad_header"),
        ([pb.Batch(version=2).SerializeToString(), b""], "version"),
        ([wire.encode_batch(wire.batch_prefix("x"), [_env()]), b"a", b"b"], "frame_count"),
        ([wire.encode_batch(wire.batch_prefix("x"), [_env(), _env()]), b"a"], "frame_count"),
        ([wire.encode_batch(wire.batch_prefix("x"), [_env(version=9)]), b"a"], "version"),
        ([wire.encode_batch(wire.batch_prefix("x"), [_env(kind=42)]), b"a"], "bad_header"),
        ([wire.encode_batch(wire.batch_prefix("x"), [_env(channel=0)]), b"a"], "bad_header"),
        ([pb.Batch(version=1).SerializeToString(), b"a"], "frame_count"),
    ],
)
def test_malformed_frames_are_rejected_with_reason(frames: list[bytes], reason: str) -> None:
    # Each kind of garbage maps to the counter label the receiver increments.
    with pytest.raises(wire.FrameError) as info:
        wire.decode_frames(frames)
    assert info.value.reason == reason


@given(st.lists(st.binary(max_size=64), max_size=5))
def test_random_bytes_never_raise_anything_but_frame_error(frames: list[bytes]) -> None:
    # Property: arbitrary frames either decode or raise FrameError.
    try:
        wire.decode_frames(frames)
    except wire.FrameError:
        pass


def test_parse_channel_accepts_names_values_and_default() -> None:
    assert wire.parse_channel("bulk") == wire.BULK
    assert wire.parse_channel(None) == wire.NORMAL
    assert wire.parse_channel(0) == wire.NORMAL
    assert wire.parse_channel(wire.HIGH) == wire.HIGH
    with pytest.raises(InvalidArgument):
        wire.parse_channel("urgent")
    with pytest.raises(InvalidArgument):  # an enum number the contract does not define (proto3 enums are open)
        wire.parse_channel(12)


def _packed(sizes: list[int], envelopes: int | None = None) -> bytes:
    count = len(sizes) if envelopes is None else envelopes
    return wire.encode_batch(wire.batch_prefix("x"), [_env(id=i + 1) for i in range(count)], sizes)


def test_packed_batch_round_trip_splits_the_one_payload_frame() -> None:
    # Batch.payload_sizes: n small payloads travel back to back in one frame, in envelope order.
    header = _packed([2, 0, 300])
    batch, payloads = wire.decode_frames([header, b"ab" + b"" + b"c" * 300])
    assert [e.id for e in batch.envelopes] == [1, 2, 3]
    assert list(batch.payload_sizes) == [2, 0, 300]
    assert [bytes(p) for p in payloads] == [b"ab", b"", b"c" * 300]
    # Same over a zero-copy buffer (the chunk channel hands memoryviews to the decoder).
    _, views = wire.decode_frames([header, memoryview(b"ab" + b"c" * 300)])
    assert [bytes(p) for p in views] == [b"ab", b"", b"c" * 300]


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([_packed([1, 1]), b"ab", b"c"], "frame_count"),  # packed means exactly one payload frame
        ([_packed([1, 1]), b"abc"], "frame_count"),  # sizes do not add up to the frame
        ([_packed([1, 1]), b"a"], "frame_count"),
        ([_packed([1, 1], envelopes=3), b"ab"], "frame_count"),  # a size per envelope
        ([_packed([1, 1, 1], envelopes=2), b"abc"], "frame_count"),
    ],
)
def test_inconsistent_packed_batches_are_rejected(frames: list[bytes], reason: str) -> None:
    with pytest.raises(wire.FrameError) as info:
        wire.decode_frames(frames)
    assert info.value.reason == reason


@given(st.integers(min_value=1, max_value=2**64 - 1), st.integers(min_value=0, max_value=2**63 - 1),
       st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=2**62),
       st.sampled_from([wire.CAST, wire.CALL, wire.REPLY]), st.text(max_size=20))
def test_header_from_template_equals_the_serialized_envelope(message_id: int, sent: int, correlation: int,
                                                            deadline: int, kind: int, tenant: str) -> None:
    # The per-flow template plus appended per-message fields parses as the Envelope built field by field.
    env = pb.Envelope(version=1, kind=kind, channel=wire.HIGH, tenant=tenant, flags=wire.FLAG_ACK)
    env.sender.node_id, env.to_agent.node_id, env.to_agent.agent_id = "a", "b", "svc"
    data = wire.header(wire.header_template(env), message_id, sent, correlation, deadline)
    env.id, env.sent_unix_ns, env.correlation_id, env.deadline_unix_ms = message_id, sent, correlation, deadline
    assert pb.Envelope.FromString(data) == env
