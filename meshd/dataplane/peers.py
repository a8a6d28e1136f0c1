"""Per-peer and per-call state of the data plane (plain containers, no I/O)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from typing import Any

import zmq

from mabeam.dataplane import envelope as wire
from mabeam.dataplane.errors import ResourceExhausted
from mabeam.dataplane.message import AgentRef, Message
from mabeam.v1 import dataplane_pb2 as pb


class Peer:
    """Outbound state for one peer node: its DEALERs, per-channel queues, unacked messages."""

    def __init__(self, node_id: str, addresses: Mapping[str, str], curve_key: str | None) -> None:
        self.node_id = node_id
        self.addresses = dict(addresses)
        self.curve_key = curve_key or None
        self.sockets: dict[int, zmq.Socket] = {}
        self.queues: dict[int, deque[tuple[bytes, bytes | memoryview]]] = {ch: deque() for ch in wire.CHANNELS}
        self.blocked: set[int] = set()
        # id -> [channel, [(envelope bytes, payload), ...], last sent]
        self.unacked: dict[int, list[Any]] = {}
        self.acks_due: list[int] = []
        self.down = False
        self.space = asyncio.Event()


class PendingCall:
    """A call waiting for its reply: a future (in-process caller) or an attached caller's address."""

    __slots__ = ("id", "future", "caller", "node_id", "timer")

    def __init__(self, call_id: int, future: asyncio.Future[Message] | None, caller: AgentRef, node_id: str) -> None:
        self.id = call_id
        self.future = future
        self.caller = caller
        self.node_id = node_id
        self.timer: asyncio.TimerHandle | None = None


class QueueFull(ResourceExhausted):
    """Outbound queue to a peer is full (``send`` waits on ``peer.space``; ``send_nowait`` raises)."""

    def __init__(self, peer: Peer, why: str = "") -> None:
        super().__init__(why or f"outbound queue to {peer.node_id} is full")
        self.peer = peer


def copy_with_new_id(env: pb.Envelope, new_id: int) -> pb.Envelope:
    """A copy of ``env`` with another id (group copies, chunks)."""
    copy = pb.Envelope()
    copy.CopyFrom(env)
    copy.id = new_id
    return copy

