"""Hypothesis strategies for data-plane ZeroMQ messages: valid batches and chunks, then broken ones.

``multipart(node_id)`` draws the frames of one ZeroMQ multipart message as a
peer or an attached process would send it — a ``Batch`` header with 1–4
envelopes of every kind (CAST, CALL, REPLY, ERROR, SYSTEM with every op),
flags, destinations, chunk fields and payloads, one frame per payload or
packed, an envelope sometimes with one field broken (not UTF-8, the wrong wire
type, unknown, oversized) — and then often breaks it: bytes flipped, frames cut, extended,
dropped, duplicated, swapped or added, the header replaced by random bytes, an
unknown kind, channel, version or flag, a chunk whose header lies about its
index, count or sizes, thousands of envelopes. Random frames and a whole
chunked message with one lying chunk are drawn too. Everything is built from
``mabeam.v1.dataplane_pb2`` and the codec in :mod:`mabeam.dataplane.envelope`,
so the fuzzed bytes follow the wire format as it is.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from mabeam.dataplane import envelope as wire
from mabeam.v1 import common_pb2
from mabeam.v1 import dataplane_pb2 as pb

KINDS = [wire.CAST, wire.CALL, wire.REPLY, wire.ERROR, wire.SYSTEM]
CHANNELS = list(wire.CHANNELS)
SYSTEM_OPS = [value.number for value in pb.SystemOp.DESCRIPTOR.values]
#: Ids and names that mean something to meshd (itself, the probe endpoint, the default tenant) among random ones.
WORDS = ["", "default", "node-1", "sink", "fuzzer", "echo", "a", "x" * 200, "../x", "\x00", "é☃", "t1"]
U64 = 2**64 - 1
I64 = (-(2**63), 2**63 - 1)


def _text() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(WORDS), st.text(max_size=12))


def _ref(draw: Any) -> common_pb2.AgentRef:
    return common_pb2.AgentRef(tenant=draw(_text()), node_id=draw(_text()), agent_id=draw(_text()))


def _payload() -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=24), st.sampled_from([b"", b"sink", b"64", b"-1", b"9" * 5000]),
                     st.just(b"p" * 70_000))  # above 64 KiB: received zero-copy (a memoryview) by meshd


@st.composite
def envelopes(draw: Any, node_id: str) -> pb.Envelope:
    """One envelope with any kind, flags and destination (mostly well-formed, sometimes not)."""
    env = pb.Envelope(
        version=draw(st.sampled_from([1, 1, 1, 0, 2])),
        id=draw(st.one_of(st.integers(0, U64), st.sampled_from([0, 1, U64]))),
        channel=draw(st.one_of(st.sampled_from(CHANNELS), st.sampled_from([0, 5, 99]))),
        kind=draw(st.one_of(st.sampled_from(KINDS), st.sampled_from([0, 6, 42]))),
        tenant=draw(_text()),
        flags=draw(st.one_of(st.sampled_from([0, 0, wire.FLAG_ACK, wire.FLAG_CHUNK, wire.FLAG_ACK | wire.FLAG_CHUNK]),
                             st.integers(0, 2**32 - 1))),
    )
    env.sender.CopyFrom(_ref(draw))
    where = draw(st.sampled_from(["agent", "agent", "name", "group", "none"]))
    if where == "agent":
        env.to_agent.CopyFrom(common_pb2.AgentRef(tenant=draw(st.sampled_from(["", "default", "t1"])),
                                          node_id=draw(st.sampled_from([node_id, node_id, "", "node-9"])),
                                          agent_id=draw(st.sampled_from(["fuzzer", "sink", "nobody", ""]))))
    elif where == "name":
        env.to_name = draw(_text())
    elif where == "group":
        env.to_group.group = draw(_text())
        env.to_group.mode = draw(st.sampled_from([0, 1, 2, 9]))
    if draw(st.booleans()):
        env.correlation_id = draw(st.integers(0, U64))
    if draw(st.booleans()):
        env.deadline_unix_ms = draw(st.one_of(st.integers(*I64), st.sampled_from([1, 2**62])))
    if env.kind == wire.SYSTEM or draw(st.integers(0, 9)) == 0:
        env.system_op = draw(st.one_of(st.sampled_from(SYSTEM_OPS), st.sampled_from([0, 10, 77])))
    if env.kind == wire.ERROR or draw(st.integers(0, 9)) == 0:
        env.error_code = draw(st.one_of(st.integers(0, 16), st.integers(-(2**31), 2**31 - 1)))
        env.error_message = draw(_text())
    if env.flags & wire.FLAG_CHUNK:
        env.chunk_index = draw(st.one_of(st.integers(0, 3), st.integers(0, 2**32 - 1)))
        env.chunk_count = draw(st.one_of(st.integers(0, 4), st.integers(0, 2**32 - 1)))
        env.total_size = draw(st.one_of(st.integers(0, 100), st.sampled_from([64 << 20, (64 << 20) + 1, U64])))
    if draw(st.booleans()):
        env.acked_ids.extend(draw(st.lists(st.integers(0, U64), max_size=4)))
    if draw(st.booleans()):
        env.sent_unix_ns = draw(st.integers(*I64))
    if draw(st.integers(0, 4)) == 0:
        env.traceparent = draw(_text())
    return env


def _field(number: int, wire_type: int, body: bytes) -> bytes:
    """One protobuf field: tag, then the body as given (a LEN body gets its length prefix here)."""
    tag = wire._varint(number << 3 | wire_type)
    return tag + (wire._varint(len(body)) + body if wire_type == 2 else body)


#: Strings that are not UTF-8: a lone continuation byte, a bad pair, a surrogate, an overlong encoding.
BAD_UTF8 = [b"\xff", b"a\x80", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf"]
_STRING_FIELDS = [4, 11, 12, 15]  # to_name, traceparent, tenant, error_message
_REF_FIELDS = [3, 5]  # sender, to_agent (AgentRef: tenant 1, node_id 2, agent_id 3)


def _corrupt(data: bytes, draw: Any) -> bytes:
    """One serialized envelope with one field broken the ways a codec can be: appended fields win (the last
    value of a scalar), so each corruption replaces what the valid envelope carried."""
    how = draw(st.sampled_from(["none"] * 6 + ["utf8", "utf8_nested", "wire_type", "unknown", "oversize"]))
    if how == "utf8":
        return data + _field(draw(st.sampled_from(_STRING_FIELDS)), 2, draw(st.sampled_from(BAD_UTF8)))
    if how == "utf8_nested":
        inner = _field(draw(st.integers(1, 3)), 2, draw(st.sampled_from(BAD_UTF8)))
        return data + _field(draw(st.sampled_from(_REF_FIELDS)), 2, inner)
    if how == "wire_type":
        # A varint field sent as bytes, a string as a varint, a fixed64 as a fixed32 (wire type 5).
        number, wire_type = draw(st.sampled_from([(7, 2), (8, 2), (16, 2), (12, 0), (4, 0), (2, 5), (9, 0)]))
        body = {0: b"\x05", 2: b"\x01\x02", 5: b"\x00\x00\x00\x00"}[wire_type]
        return data + wire._varint(number << 3 | wire_type) + (b"\x02" + body if wire_type == 2 else body)
    if how == "unknown":
        return data + _field(draw(st.sampled_from([22, 99, 536870911])), 0, b"\x01")
    if how == "oversize":
        size = draw(st.sampled_from([129, 300, 5000, 70_000]))
        if draw(st.booleans()):
            return data + _field(draw(st.sampled_from(_STRING_FIELDS)), 2, b"x" * size)
        return data + _field(draw(st.sampled_from(_REF_FIELDS)), 2, _field(draw(st.integers(1, 3)), 2, b"y" * size))
    return data


@st.composite
def valid_batches(draw: Any, node_id: str) -> list[bytes]:
    """The frames of one batch as the codec builds it: header, then payloads (one frame each, or packed).

    Mostly well-formed; an envelope sometimes carries one broken field (:func:`_corrupt`), the
    "mutated-valid" case at the field level (the frame-level mutations are in :func:`multipart`).
    """
    envs = draw(st.lists(envelopes(node_id), min_size=1, max_size=4))
    payloads = [draw(_payload()) for _ in envs]
    prefix = wire.batch_prefix(draw(st.sampled_from(["", node_id, "node-2", "fuzz-peer", "x" * 300])))
    data = [_corrupt(env.SerializeToString(), draw) for env in envs]
    return wire.batch_frames(prefix, data, payloads, packed=len(envs) > 1 and draw(st.booleans()))


def _mutate(frames: list[bytes], draw: Any) -> list[bytes]:
    frames = list(frames)
    how = draw(st.sampled_from(["flip", "cut", "extend", "drop", "duplicate", "swap", "add", "header",
                                "sizes", "empty", "sender_utf8", "wrapped"]))
    at = draw(st.integers(0, len(frames) - 1))
    frame = frames[at]
    if how == "flip" and frame:
        i = draw(st.integers(0, len(frame) - 1))
        frames[at] = frame[:i] + bytes([frame[i] ^ draw(st.integers(1, 255))]) + frame[i + 1:]
    elif how == "cut":
        frames[at] = frame[:draw(st.integers(0, max(0, len(frame) - 1)))]
    elif how == "extend":
        frames[at] = frame + draw(st.binary(min_size=1, max_size=16))
    elif how == "drop" and len(frames) > 1:
        del frames[at]
    elif how == "duplicate":
        frames.insert(at, frame)
    elif how == "swap" and len(frames) > 1:
        other = draw(st.integers(0, len(frames) - 1))
        frames[at], frames[other] = frames[other], frames[at]
    elif how == "add":
        frames.extend(draw(st.lists(st.binary(max_size=8), min_size=1, max_size=3)))
    elif how == "header":
        frames[0] = draw(st.binary(max_size=48))
    elif how == "sizes":
        # A packed-batch size list that lies (field 4 appended to the header: the last one wins for each entry).
        sizes = draw(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=5))
        body = b"".join(wire._varint(n) for n in sizes)
        frames[0] = frames[0] + b"\x22" + wire._varint(len(body)) + body
    elif how == "empty":
        frames[at] = b""
    elif how == "sender_utf8":
        frames[0] = frames[0] + _field(2, 2, draw(st.sampled_from(BAD_UTF8)))  # Batch.sender_node
    elif how == "wrapped":
        # An envelope field whose bytes are not an Envelope (a Batch inside a Batch, random bytes).
        frames[0] = frames[0] + _field(3, 2, draw(st.one_of(st.just(frames[0]), st.binary(min_size=1, max_size=12))))
    return frames


@st.composite
def lying_chunks(draw: Any, node_id: str) -> list[list[bytes]]:
    """A chunked message (several ZeroMQ messages) in which one chunk's header or data lies."""
    count = draw(st.integers(2, 4))
    size = draw(st.integers(1, 64))
    total = count * size
    message_id = draw(st.integers(1, U64))
    liar = draw(st.integers(0, count - 1))
    lie = draw(st.sampled_from(["index", "count", "total", "longer", "shorter", "repeat"]))
    prefix = wire.batch_prefix(draw(st.sampled_from(["fuzz-peer", node_id])))
    messages: list[list[bytes]] = []
    for index in range(count):
        env = pb.Envelope(version=1, id=message_id, kind=wire.CAST, channel=wire.BULK, flags=wire.FLAG_CHUNK,
                          chunk_index=index, chunk_count=count, total_size=total, tenant="default")
        env.to_agent.CopyFrom(common_pb2.AgentRef(tenant="default", node_id=node_id, agent_id="sink"))
        data = bytes([index]) * size
        if index == liar:
            if lie == "index":
                env.chunk_index = index + draw(st.integers(1, 5))
            elif lie == "count":
                env.chunk_count = count + draw(st.sampled_from([-count, -1, 1, 2**31]))
            elif lie == "total":
                env.total_size = draw(st.sampled_from([0, total - 1, total + 1, 64 << 20, U64]))
            elif lie == "longer":
                data += b"+" * draw(st.integers(1, 64))
            elif lie == "shorter":
                data = data[:-1]
            else:
                env.chunk_index = max(0, index - 1)
        messages.append([wire.encode_batch(prefix, [env.SerializeToString()]), data])
    return messages


def multipart(node_id: str) -> st.SearchStrategy[list[list[bytes]]]:
    """One or more ZeroMQ multipart messages: valid, mutated-valid, random, or a lying chunked message."""
    valid = valid_batches(node_id)

    @st.composite
    def mutated(draw: Any) -> list[bytes]:
        frames = draw(valid)
        for _ in range(draw(st.integers(1, 3))):
            frames = _mutate(frames, draw)
        return frames or [b""]

    @st.composite
    def many_envelopes(draw: Any) -> list[bytes]:
        # More envelopes than a batch may carry, or a payload count far from the envelope count.
        env = pb.Envelope(version=1, kind=wire.CAST, channel=wire.NORMAL).SerializeToString()
        count = draw(st.sampled_from([wire.MAX_BATCH_ENVELOPES + 1, 600]))
        header = wire.encode_batch(wire.batch_prefix("fuzz-peer"), [env] * count)
        return [header, *([b""] * draw(st.sampled_from([count, 1, 0])))] or [header]

    random_frames = st.lists(st.binary(max_size=40), min_size=1, max_size=6)
    single = st.one_of(valid, mutated(), mutated(), mutated(), random_frames, many_envelopes())
    return st.one_of(single.map(lambda frames: [frames]), single.map(lambda frames: [frames]),
                     single.map(lambda frames: [frames]), lying_chunks(node_id))


#: One of each kind of payload: empty, short, not UTF-8, a long decimal, above 64 KiB (meshd receives it zero-copy).
PAYLOAD_KINDS = (b"", b"sink", b"\xff\xfe\xc0", b"9" * 5000, b"p" * 70_000)


def every_kind(node_id: str, agent_id: str) -> list[list[bytes]]:
    """One valid single-envelope batch per (kind or system op, flags, payload kind), unknown ones included.

    The deterministic floor under the drawn examples: every frame kind reaches meshd with every flag
    combination and every kind of payload, whatever hypothesis draws. Casts and calls go to ``agent_id``.
    """
    messages: list[list[bytes]] = []
    # DETACH last: the attach operations before it then come from an attached connection.
    ops = sorted([*SYSTEM_OPS, 77], key=lambda op: op == pb.SYSTEM_OP_DETACH)
    kinds = [(kind, 0) for kind in KINDS if kind != wire.SYSTEM] + [(wire.SYSTEM, op) for op in ops]
    for kind, op in [(0, 0), (42, 0), *kinds]:
        for flags in (0, wire.FLAG_ACK, wire.FLAG_CHUNK, wire.FLAG_ACK | wire.FLAG_CHUNK, 1 << 7):
            for payload in PAYLOAD_KINDS:
                env = pb.Envelope(version=1, id=len(messages) + 1, kind=kind, channel=wire.NORMAL, flags=flags,
                                  system_op=op, tenant="default", correlation_id=len(messages) + 1,
                                  error_code=13 if kind == wire.ERROR else 0)
                if flags & wire.FLAG_CHUNK:
                    env.chunk_count, env.total_size = 1, len(payload)
                env.to_agent.CopyFrom(common_pb2.AgentRef(tenant="default", node_id=node_id, agent_id=agent_id))
                messages.append([wire.encode_batch(wire.batch_prefix(""), [env.SerializeToString()]), payload])
    return messages


def every_reason(node_id: str) -> list[list[bytes]]:
    """One message per refusal reason a socket counts, whatever hypothesis draws: ``frame_count``,
    ``bad_header``, ``version`` (batch and envelope), ``chunk_gap``, ``chunk_bad`` (on the channels, which
    reassemble chunks), ``unknown_op`` and, on the attach socket, ``bad_field`` (an ATTACH naming an invalid
    agent id)."""
    def batch(env: pb.Envelope, version: int = wire.VERSION) -> bytes:
        return pb.Batch(version=version, sender_node="fuzz-peer").SerializeToString() + _field(
            3, 2, env.SerializeToString())

    def cast(**fields: Any) -> pb.Envelope:
        env = pb.Envelope(**{"version": 1, "id": 7, "kind": wire.CAST, "channel": wire.BULK, "tenant": "default",
                             **fields})
        env.to_agent.CopyFrom(common_pb2.AgentRef(tenant="default", node_id=node_id, agent_id="sink"))
        return env

    attach = pb.Envelope(version=1, id=8, kind=wire.SYSTEM, channel=wire.CONTROL, system_op=pb.SYSTEM_OP_ATTACH)
    attach.sender.agent_id = "../not an id"
    return [
        [batch(cast())],  # frame_count: no payload frame
        [batch(cast()), b"", b""],  # frame_count: one payload frame too many
        [b"\xff\xff\xff", b""],  # bad_header
        [batch(cast(), version=2), b""],  # version (batch)
        [batch(cast(version=0)), b""],  # version (envelope)
        [batch(cast(id=2**63 + 1, flags=wire.FLAG_CHUNK, chunk_index=1, chunk_count=2, total_size=2)), b"x"],  # gap
        [batch(cast(id=2**63 + 2, flags=wire.FLAG_CHUNK, chunk_count=0, total_size=1)), b"x"],  # chunk_bad
        [batch(pb.Envelope(version=1, kind=wire.SYSTEM, channel=wire.CONTROL, system_op=77)), b""],  # unknown_op
        [batch(attach), b"64"],  # bad_field (attach)
    ]


def cast_to(node_id: str, agent_id: str, channel: int, payload: bytes, message_id: int) -> list[bytes]:
    """A valid single-envelope CAST batch from an unknown peer to ``agent_id`` on ``node_id`` (the probe)."""
    env = pb.Envelope(version=1, id=message_id, kind=wire.CAST, channel=channel, tenant="default")
    env.to_agent.CopyFrom(common_pb2.AgentRef(tenant="default", node_id=node_id, agent_id=agent_id))
    return [wire.encode_batch(wire.batch_prefix("fuzz-peer"), [env.SerializeToString()]), payload]


def chunked_cast_to(node_id: str, agent_id: str, payload: bytes, chunk: int, message_id: int) -> list[list[bytes]]:
    """A valid chunked CAST on bulk (one ZeroMQ message per chunk) to ``agent_id`` on ``node_id``."""
    parts = [payload[i:i + chunk] for i in range(0, len(payload), chunk)]
    messages = []
    for index, part in enumerate(parts):
        env = pb.Envelope(version=1, id=message_id, kind=wire.CAST, channel=wire.BULK, tenant="default",
                          flags=wire.FLAG_CHUNK, chunk_index=index, chunk_count=len(parts), total_size=len(payload))
        env.to_agent.CopyFrom(common_pb2.AgentRef(tenant="default", node_id=node_id, agent_id=agent_id))
        messages.append([wire.encode_batch(wire.batch_prefix("fuzz-peer"), [env.SerializeToString()]), part])
    return messages


def system(op: int, message_id: int, agent_id: str = "", payload: bytes = b"") -> list[bytes]:
    """A valid attach operation (SYSTEM envelope) as :mod:`mabeam.dataplane.attach` sends it."""
    env = pb.Envelope(version=1, id=message_id, kind=wire.SYSTEM, channel=wire.CONTROL, system_op=op,
                      tenant="default")
    env.sender.agent_id = agent_id
    return [wire.encode_batch(wire.batch_prefix(""), [env.SerializeToString()]), payload]
