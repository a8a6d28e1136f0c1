"""Reassembly buffer pool: a buffer is reused only once nothing references the payload given out."""

from __future__ import annotations

from meshd.dataplane.chunking import BufferPool, Reassembler

MIB = 1 << 20


def _message(r: Reassembler, key: int, fill: int, chunks: int = 3) -> memoryview:
    whole = None
    for index in range(chunks):
        whole = r.add(key, index, chunks, chunks * MIB, bytes([fill]) * MIB, 0.0)
    assert whole is not None
    return whole


def test_payload_in_use_is_never_overwritten_and_released_buffers_are_reused() -> None:
    r = Reassembler(max_message=64 * MIB, max_bytes=64 * MIB, timeout=5, pool_bytes=16 * MIB)
    a = _message(r, 1, 1)
    b = _message(r, 2, 2)
    assert r.pool.reused == 0
    assert bytes(a[:1]) == b"\x01" and bytes(b[:1]) == b"\x02"
    del a
    c = _message(r, 3, 3)  # takes a's buffer
    assert r.pool.reused == 1
    assert bytes(b[:1]) == b"\x02" and bytes(b[-1:]) == b"\x02"
    assert bytes(c[:1]) == b"\x03" and len(c) == 3 * MIB
    view_of_view = c[10:20]
    del c
    d = _message(r, 4, 4)  # c's buffer is still referenced through a slice: a new one
    assert bytes(view_of_view) == b"\x03" * 10
    assert bytes(d[:1]) == b"\x04"


def test_pool_is_bounded() -> None:
    pool = BufferPool(max_bytes=2 * MIB)
    held = [pool.acquire(MIB), pool.acquire(MIB), pool.acquire(MIB)]
    assert pool.bytes_held == 2 * MIB
    assert all(len(buf) >= MIB for buf in held)
