"""Wire format of the data plane: encoding and validation of ZeroMQ multipart batches.

A data-plane ZeroMQ message is ``[Batch, payload_1, ..., payload_n]``: one
protobuf :class:`Batch` header frame listing ``n`` envelopes, then one frame per
payload. Payloads are never re-encoded. Envelopes are serialized once when sent;
a batch header is built by concatenating those bytes as repeated field 3, so
forwarding and batching never re-encode an envelope either.

:func:`decode_frames` is the single validation point for anything that came
from a socket: it never raises anything but :class:`FrameError`, whose
``reason`` is the label the receiver counts.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import DecodeError

from mabeam.v1 import dataplane_pb2 as pb

VERSION = 1

CONTROL = pb.CHANNEL_CONTROL
HIGH = pb.CHANNEL_HIGH
NORMAL = pb.CHANNEL_NORMAL
BULK = pb.CHANNEL_BULK
CHANNELS: tuple[int, ...] = (CONTROL, HIGH, NORMAL, BULK)
CHANNEL_NAMES: dict[int, str] = {CONTROL: "control", HIGH: "high", NORMAL: "normal", BULK: "bulk"}
CHANNEL_BY_NAME: dict[str, int] = {name: value for value, name in CHANNEL_NAMES.items()}

CAST = pb.MESSAGE_KIND_CAST
CALL = pb.MESSAGE_KIND_CALL
REPLY = pb.MESSAGE_KIND_REPLY
ERROR = pb.MESSAGE_KIND_ERROR
SYSTEM = pb.MESSAGE_KIND_SYSTEM
_KINDS = frozenset((CAST, CALL, REPLY, ERROR, SYSTEM))

FLAG_ACK = pb.ENVELOPE_FLAG_ACK_REQUESTED
FLAG_CHUNK = pb.ENVELOPE_FLAG_CHUNK

#: Upper bound on envelopes in one batch accepted from a socket (a sender batches at most 64 by default).
MAX_BATCH_ENVELOPES = 4096


class FrameError(Exception):
    """A multipart message that is not a valid batch; ``reason`` is the counted label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def channel_name(channel: int) -> str:
    """The name of a channel ("control", "high", "normal", "bulk")."""
    return CHANNEL_NAMES[channel]


def parse_channel(value: int | str | None, default: int = NORMAL) -> int:
    """A channel from its enum value or name; None or UNSPECIFIED gives ``default``."""
    if value is None or value == 0 or value == "":
        return default
    if isinstance(value, str):
        try:
            return CHANNEL_BY_NAME[value.lower()]
        except KeyError:
            raise ValueError(f"unknown channel {value!r}; use one of {sorted(CHANNEL_BY_NAME)}") from None
    if value not in CHANNEL_NAMES:
        raise ValueError(f"unknown channel {value}")
    return value


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def batch_prefix(sender_node: str) -> bytes:
    """The fixed start of every batch header a node sends (version and sender node)."""
    return pb.Batch(version=VERSION, sender_node=sender_node).SerializeToString()


def encode_batch(prefix: bytes, envelopes: Sequence[bytes]) -> bytes:
    """A Batch header from a prefix and already-serialized envelopes (repeated field 3, no re-encoding)."""
    parts = [prefix]
    for env in envelopes:
        parts.append(b"\x1a")
        parts.append(_varint(len(env)))
        parts.append(env)
    return b"".join(parts)


def decode_frames(frames: Sequence[bytes]) -> tuple[pb.Batch, Sequence[bytes]]:
    """Validate a multipart message (without the ROUTER identity) into (batch, payload frames).

    Raises :class:`FrameError` with reason ``frame_count`` (fewer than two frames, or
    the number of payload frames differs from the envelopes), ``bad_header`` (not a
    Batch, or an envelope without a valid kind/channel), or ``version``.
    """
    if len(frames) < 2:
        raise FrameError("frame_count", f"{len(frames)} frames")
    try:
        batch = pb.Batch.FromString(frames[0])
    except (DecodeError, ValueError, TypeError) as exc:
        raise FrameError("bad_header", str(exc)[:80]) from None
    if batch.version != VERSION:
        raise FrameError("version", f"batch version {batch.version}")
    count = len(batch.envelopes)
    if count != len(frames) - 1 or count > MAX_BATCH_ENVELOPES:
        raise FrameError("frame_count", f"{count} envelopes, {len(frames) - 1} payloads")
    for env in batch.envelopes:
        if env.version != VERSION:
            raise FrameError("version", f"envelope version {env.version}")
        if env.kind not in _KINDS or env.channel not in CHANNEL_NAMES:
            raise FrameError("bad_header", f"kind {env.kind} channel {env.channel}")
    return batch, frames[1:]
