"""Wire format of the data plane: encoding and validation of ZeroMQ multipart batches.

A data-plane ZeroMQ message is ``[Batch, payload_1, ..., payload_n]``: one
protobuf :class:`Batch` header frame listing ``n`` envelopes, then one frame per
payload; or, for a batch of small payloads, ``[Batch, payload_1 + ... + payload_n]``
with the sizes in ``Batch.payload_sizes`` (one ZeroMQ frame instead of n: the
per-frame send and receive cost dominated 100-byte throughput, bench/dataplane.py).
Payloads are never re-encoded. Envelopes are serialized once when sent;
a batch header is built by concatenating those bytes as repeated field 3, so
forwarding and batching never re-encode an envelope either.

:func:`decode_frames` is the single validation point for anything that came
from a socket: it never raises anything but :class:`FrameError`, whose
``reason`` is the label the receiver counts.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from google.protobuf.message import DecodeError

from mabeam.dataplane.errors import InvalidArgument
from mabeam.v1 import dataplane_pb2 as pb

if TYPE_CHECKING:
    from mabeam.dataplane.message import AgentRef

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
    """A channel from its enum value or name; None or UNSPECIFIED gives ``default``; InvalidArgument otherwise.

    (A request may carry any enum number: proto3 enums are open, so an unknown one is bad input, not a bug.)
    """
    if value is None or value == 0 or value == "":
        return default
    if isinstance(value, str):
        try:
            return CHANNEL_BY_NAME[value.lower()]
        except KeyError:
            raise InvalidArgument(f"unknown channel {value!r}; use one of {sorted(CHANNEL_BY_NAME)}") from None
    if value not in CHANNEL_NAMES:
        raise InvalidArgument(f"unknown channel {value}; use one of {sorted(CHANNEL_BY_NAME)}")
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


_pack_fixed64 = struct.Struct("<Q").pack
_TAG_ID = b"\x11"  # field 2 (id), fixed64
_TAG_CORRELATION = b"\x49"  # field 9 (correlation_id), fixed64
_TAG_DEADLINE = b"\x50"  # field 10 (deadline_unix_ms), varint
_TAG_SENT = b"\xa0\x01"  # field 20 (sent_unix_ns), varint
_time_high: list[int] = [-1]
_time_high_bytes: list[bytes] = [b""]


def _time_varint(ns: int) -> bytes:
    """Varint of a current ``time.time_ns()`` value: the top 6 of its 9 groups change every ~2 ms, cached."""
    high = ns >> 21
    if high != _time_high[0]:
        _time_high[0] = high
        _time_high_bytes[0] = _varint(high)
    return bytes(((ns & 0x7F) | 0x80, ((ns >> 7) & 0x7F) | 0x80, ((ns >> 14) & 0x7F) | 0x80)) + _time_high_bytes[0]


def header_template(env: pb.Envelope) -> bytes:
    """The serialized fields of an envelope that stay the same between messages of one flow."""
    return env.SerializeToString()


def header(template: bytes, message_id: int, sent_unix_ns: int, correlation_id: int = 0,
           deadline_unix_ms: int = 0) -> bytes:
    """A serialized Envelope: ``template`` plus the per-message fields, appended without re-encoding.

    Protobuf accepts fields in any order, so appending id, sent time and (for calls and replies)
    deadline / correlation id to a cached serialization of the constant fields gives the same
    message as building and serializing an Envelope (bench/dataplane.py 100 B: building one
    Envelope object per message was the largest single cost on the sending side).
    """
    parts = [template, _TAG_ID, _pack_fixed64(message_id), _TAG_SENT, _time_varint(sent_unix_ns)]
    if correlation_id:
        parts += (_TAG_CORRELATION, _pack_fixed64(correlation_id))
    if deadline_unix_ms:
        parts += (_TAG_DEADLINE, _varint(deadline_unix_ms))
    return b"".join(parts)


_FLAGS_ZERO = b"\x68\x00"  # field 13 (flags) = 0, written explicitly: proto3 omits zero values


def override_suffix(sender: AgentRef, target: AgentRef, channel: int, flags: int) -> bytes:
    """Serialized fields that, appended to an envelope, set its sender, tenant, version, channel, flags and
    destination whatever it carried (protobuf: the last value of a scalar wins, nested messages merge
    field by field, a oneof takes the last member). Every string of both refs must be non-empty for the
    merge to replace rather than keep a field, which holds for resolved endpoints (tenant defaults).
    """
    env = pb.Envelope(version=VERSION, channel=cast("pb.Channel.ValueType", channel), tenant=sender.tenant,
                      flags=flags)
    s = env.sender
    s.tenant, s.node_id, s.agent_id = sender.tenant, sender.node_id, sender.agent_id
    t = env.to_agent
    t.tenant, t.node_id, t.agent_id = target.tenant, target.node_id, target.agent_id
    return env.SerializeToString() + (b"" if flags else _FLAGS_ZERO)


_SMALL_LIMIT = 1 << 14
_SMALL_VARINTS: list[bytes] = [_varint(n) for n in range(_SMALL_LIMIT)]


def batch_prefix(sender_node: str) -> bytes:
    """The fixed start of every batch header a node sends (version and sender node)."""
    return pb.Batch(version=VERSION, sender_node=sender_node).SerializeToString()


def encode_batch(prefix: bytes, envelopes: Sequence[bytes], payload_sizes: Sequence[int] | None = None) -> bytes:
    """A Batch header from a prefix and already-serialized envelopes (repeated field 3, no re-encoding).

    With ``payload_sizes`` the header announces a packed batch (field 4): the payloads follow
    as one frame, back to back.
    """
    small = _SMALL_VARINTS
    parts = [prefix]
    for env in envelopes:
        n = len(env)
        parts.append(b"\x1a")
        parts.append(small[n] if n < _SMALL_LIMIT else _varint(n))
        parts.append(env)
    if payload_sizes:
        body = b"".join([small[n] if n < _SMALL_LIMIT else _varint(n) for n in payload_sizes])
        parts.append(b"\x22")
        parts.append(_varint(len(body)))
        parts.append(body)
    return b"".join(parts)


def take_batch(queue: deque[tuple[bytes, Any]], max_batch: int, max_bytes: int, pack_below: int
               ) -> tuple[list[bytes], list[Any], int, bool]:
    """Pop one batch from a queue of (serialized envelope, payload): (envelopes, payloads, bytes, packable).

    At most ``max_batch`` envelopes and (after the first) ``max_bytes`` payload bytes; ``packable``
    when there are several and every payload is at most ``pack_below`` bytes (see :func:`batch_frames`).
    """
    envs: list[bytes] = []
    payloads: list[Any] = []
    size = 0
    small = True
    while queue and len(envs) < max_batch and (not envs or size + len(queue[0][1]) <= max_bytes):
        data, payload = queue.popleft()
        envs.append(data)
        payloads.append(payload)
        n = len(payload)
        size += n
        if n > pack_below:
            small = False
    return envs, payloads, size, small and len(envs) > 1


def batch_frames(prefix: bytes, envs: list[bytes], payloads: list[Any], packed: bool) -> list[Any]:
    """The frames of one batch: packed (header + one frame of all payloads) or one frame per payload.

    Packing: bench/dataplane.py 100 B spent ~2.3 µs per message in the per-frame pyzmq send alone.
    """
    if packed:
        return [encode_batch(prefix, envs, [len(p) for p in payloads]), b"".join(payloads)]
    return [encode_batch(prefix, envs), *payloads]


def decode_frames(frames: Sequence[bytes]) -> tuple[pb.Batch, Sequence[bytes]]:
    """Validate a multipart message (without the ROUTER identity) into (batch, payload frames).

    Raises :class:`FrameError` with reason ``frame_count`` (fewer than two frames, the
    number of payload frames differs from the envelopes, or a packed batch whose sizes do
    not match its envelopes and its one payload frame), ``bad_header`` (not a
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
    envelopes = batch.envelopes
    count = len(envelopes)
    sizes = batch.payload_sizes
    if count > MAX_BATCH_ENVELOPES:
        raise FrameError("frame_count", f"{count} envelopes")
    for env in envelopes:
        if env.version != VERSION:
            raise FrameError("version", f"envelope version {env.version}")
        if env.kind not in _KINDS or env.channel not in CHANNEL_NAMES:
            raise FrameError("bad_header", f"kind {env.kind} channel {env.channel}")
    if not sizes:
        if count != len(frames) - 1:
            raise FrameError("frame_count", f"{count} envelopes, {len(frames) - 1} payloads")
        return batch, frames[1:]
    # A packed batch: one frame with every payload back to back.
    blob = frames[1]
    if len(frames) != 2 or len(sizes) != count or sum(sizes) != len(blob):
        raise FrameError("frame_count", f"{count} envelopes, {len(sizes)} sizes, {len(frames) - 1} frames")
    payloads = []
    offset = 0
    for size in sizes:
        end = offset + size
        payloads.append(blob[offset:end])
        offset = end
    return batch, payloads
