"""Frames between the agentd main process and its workers: length-prefixed msgpack over a socketpair.

The frames themselves (one typed dataclass per operation, the :class:`~agentd.frames.Op`
enum, the one decoder) are :mod:`agentd.frames`; this module moves them. A frame
travels as a msgpack array ``[op, field, ...]``. Nothing is pickled: payloads must be
plain data (see :mod:`agentd.codec`). The main process creates a ``socket.socketpair()``
per worker and passes one end to the child's command line as a file descriptor, so no
path or port is ever bound. Bytes that are not msgpack close the channel (the peer is
broken); an array that is not a frame (unknown op, wrong fields) is logged and skipped.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

import msgpack

from agentd.codec import _default
from agentd.frames import WIRE, Frame, MalformedFrame, decode, encode, op_of

log = logging.getLogger("agentd.ipc")

_HEADER = struct.Struct(">I")
#: Largest frame accepted (a size limit on every input).
MAX_FRAME = 64 * 1024 * 1024


def pack(frame: Frame) -> bytes:
    """Length prefix + msgpack body for one frame (TypeError when a field is not plain data)."""
    body: bytes = msgpack.packb(encode(frame), default=_default, use_bin_type=True)
    return _HEADER.pack(len(body)) + body


def unpack(body: bytes | memoryview) -> Any:
    """The msgpack value a body encodes (:func:`agentd.frames.decode` makes it a frame)."""
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


async def read_frame(reader: asyncio.StreamReader) -> Frame | None:
    """The next frame, or None at end of stream; MalformedFrame for an array that is not a frame."""
    try:
        header = await reader.readexactly(4)
        (size,) = _HEADER.unpack(header)
        if size > MAX_FRAME:
            raise ValueError(f"frame of {size} bytes exceeds the {MAX_FRAME} byte limit")
        return decode(unpack(await reader.readexactly(size)))
    except (asyncio.IncompleteReadError, OSError):
        return None


class Channel:
    """Frames both ways over one non-blocking socket, driven by ``loop.add_reader``: no task, no stream.

    Replaces an asyncio StreamReader/StreamWriter pair on the main <-> worker socketpair
    (measured with ``python -m bench agents``, ``cross_process_calls_per_s`` and its ratio to
    the same-run socketpair floor): a frame reaches ``on_frame`` in the readiness callback
    itself instead of waking a reader task one loop turn later, and a write is one ``send``
    at once when nothing is queued (uvloop's ``transport.write`` cost ~15 µs a call in
    cProfile on both sides). Writes made while a received burst is being dispatched are
    corked and leave in one ``send``. A short write keeps the rest and waits for
    ``add_writer``; the peer's end (EOF, reset) calls ``on_close`` once.
    """

    __slots__ = ("_sock", "_fd", "_loop", "_in", "_out", "_corked", "_on_frame", "_on_close", "closed", "_pack",
                 "malformed")

    def __init__(self, sock: socket.socket, on_frame: Callable[[Frame], None],
                 on_close: Callable[[], None]) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._in = bytearray()
        self._out = bytearray()
        self._corked = False
        self._on_frame = on_frame
        self._on_close = on_close
        self.closed = False
        # One Packer per channel (loop thread only; it resets itself when a value cannot be encoded):
        # 0.5 µs a frame instead of 1.2 µs for msgpack.packb (bench agents, cross_process_calls_per_s).
        self._pack = msgpack.Packer(default=_default, use_bin_type=True).pack
        #: Arrays received that were not frames (logged and skipped).
        self.malformed = 0
        self._loop.add_reader(self._fd, self._readable)

    def write(self, frame: Frame) -> None:
        """Send one frame now (or queue it behind unsent bytes); TypeError when it is not plain data."""
        if self.closed:
            return
        body = self._pack([WIRE[type(frame)], *frame])  # frames.encode, inline: it is on every call
        data = _HEADER.pack(len(body)) + body
        if self._out or self._corked:
            self._out += data
            return
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._lost()
            return
        if sent < len(data):
            self._out += memoryview(data)[sent:]
            self._loop.add_writer(self._fd, self._writable)

    def _flush(self) -> None:
        out = self._out
        try:
            sent = self._sock.send(out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._lost()
            return
        del out[:sent]
        if out:
            self._loop.add_writer(self._fd, self._writable)

    def _writable(self) -> None:
        out = self._out
        if out:
            try:
                sent = self._sock.send(out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._lost()
                return
            del out[:sent]
        if not out:
            self._loop.remove_writer(self._fd)

    def _readable(self) -> None:
        try:
            data = self._sock.recv(1 << 18)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset: the peer is gone
            data = b""
        if not data:
            self._lost()
            return
        buffer = self._in
        if buffer:
            buffer += data
            data = bytes(buffer)
            buffer.clear()
        view = memoryview(data)
        end = len(data)
        offset = 0
        frames = []
        while end - offset >= 4:
            (size,) = _HEADER.unpack_from(data, offset)
            if size > MAX_FRAME:
                log.error("frame of %s bytes exceeds the %s byte limit: closing the channel", size, MAX_FRAME)
                self._lost()
                return
            if end - offset - 4 < size:
                break
            try:
                raw = unpack(view[offset + 4:offset + 4 + size])
            except Exception as exc:  # not msgpack: the byte stream is broken
                log.error("ipc: undecodable frame (%s): closing the channel", exc)
                self._lost()
                return
            offset += 4 + size
            try:
                frames.append(decode(raw))
            except MalformedFrame as exc:  # msgpack, but not a frame: a bug on the other side, skip it
                self.malformed += 1
                log.error("ipc: %s: frame skipped", exc)
        if offset < end:
            buffer += view[offset:]
        if len(frames) == 1:
            self._dispatch(frames[0])
            return
        self._corked = True  # replies to a burst leave in one send
        try:
            for frame in frames:
                if self.closed:
                    return
                self._dispatch(frame)
        finally:
            self._corked = False
            if self._out and not self.closed:
                self._flush()

    def _dispatch(self, frame: Frame) -> None:
        try:
            self._on_frame(frame)
        except Exception:  # one bad frame must not stop the channel
            log.exception("ipc: handling frame %s failed", op_of(frame))

    def _lost(self) -> None:
        if self.closed:
            return
        self.close()
        self._on_close()

    def close(self) -> None:
        """Stop reading, try to send what is queued (up to a second), close the socket."""
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._fd)
        if self._out:
            self._loop.remove_writer(self._fd)
            try:
                self._sock.settimeout(1.0)
                self._sock.sendall(self._out)
            except OSError:
                pass
            self._out.clear()
        self._sock.close()


def send_blocking(sock: socket.socket, frame: Frame) -> None:
    """Write one frame on a blocking socket (the watchdog thread's channel)."""
    sock.sendall(pack(frame))


def recv_blocking(sock: socket.socket) -> Frame | None:
    """Read one frame from a blocking socket, or None at end of stream (MalformedFrame if not a frame)."""
    header = _recv_exactly(sock, 4)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    body = _recv_exactly(sock, size)
    return None if body is None else decode(unpack(body))


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)
