"""Envelope validation: every malformed multipart message is a counted FrameError, never a crash."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mabeam.v1 import dataplane_pb2 as pb
from meshd.dataplane import envelope as wire


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
    with pytest.raises(ValueError):
        wire.parse_channel("urgent")
