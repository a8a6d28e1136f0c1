"""The main <-> worker frame channel (agentd.ipc.Channel) and the worker's RemoteReply, on a real socketpair."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from agentd.errors import MailboxFull
from agentd.ipc import Channel, pack
from agentd.worker import RemoteReply


async def test_frames_both_ways_large_ones_split_and_queued_behind_a_full_socket() -> None:
    left, right = socket.socketpair()
    got: list[list[Any]] = []
    closed: list[str] = []
    a = Channel(left, lambda frame: None, lambda: closed.append("a"))
    b = Channel(right, got.append, lambda: closed.append("b"))
    big = b"x" * (3 << 20)  # larger than the socket buffer: partial sends, add_writer, split reads
    a.write(["one", 1])
    a.write(["big", big])
    a.write(["two", {"k": [1, 2]}])
    for _ in range(500):
        if len(got) == 3:
            break
        await asyncio.sleep(0.01)
    assert got == [["one", 1], ["big", big], ["two", {"k": [1, 2]}]]
    a.close()
    for _ in range(100):
        if closed:
            break
        await asyncio.sleep(0.01)
    assert closed == ["b"] and b.closed  # the peer's end is reported once; a closed channel drops writes
    b.write(["dropped"])


async def test_a_malformed_frame_closes_the_channel() -> None:
    left, right = socket.socketpair()
    closed: list[bool] = []
    Channel(right, lambda frame: None, lambda: closed.append(True))
    left.sendall(b"\x00\x00\x00\x03\xc1\xc1\xc1")  # 0xc1 is never valid msgpack
    for _ in range(100):
        if closed:
            break
        await asyncio.sleep(0.01)
    assert closed == [True]
    left.close()


class _Sink:
    def __init__(self) -> None:
        self.frames: list[list[Any]] = []

    def write(self, frame: list[Any]) -> None:
        pack(frame)  # what the channel does first: TypeError for data msgpack cannot carry
        self.frames.append(frame)


def test_remote_reply_writes_once_and_reports_what_it_cannot_encode() -> None:
    sink = _Sink()
    ok = RemoteReply(sink, 1)  # type: ignore[arg-type]
    ok.set_result({"n": 1})
    ok.set_result("again")  # answered already: nothing more
    RemoteReply(sink, 2).set_exception(MailboxFull("full"))  # type: ignore[arg-type]
    RemoteReply(sink, 3).set_exception(RuntimeError("boom"))  # type: ignore[arg-type]
    RemoteReply(sink, 4).set_result(object())  # type: ignore[arg-type]
    assert sink.frames[:3] == [["ok", 1, {"n": 1}], ["err", 2, "RESOURCE_EXHAUSTED", "full"],
                               ["err", 3, "INTERNAL", "RuntimeError('boom')"]]
    assert sink.frames[3][:3] == ["err", 4, "INVALID_ARGUMENT"]
