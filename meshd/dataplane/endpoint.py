"""In-process endpoints of meshd's data plane.

The value types (:class:`~mabeam.dataplane.message.Message`, ``Group``,
``AgentRef``) live in the shared package :mod:`mabeam.dataplane`. An in-process :class:`LocalEndpoint` is a bounded mailbox inside meshd's
process (used by the gRPC ``Subscribe`` face, by tests and benches). Processes
outside meshd use :class:`mabeam.dataplane.attach.AttachedEndpoint` instead;
both offer the same ``send``/``call``/``reply``/``receive`` operations.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mabeam.dataplane.errors import DataPlaneError
from mabeam.dataplane.message import AgentRef, Destination, Message

if TYPE_CHECKING:
    from meshd.dataplane.plane import DataPlane


class LocalEndpoint:
    """An in-process endpoint: a bounded mailbox (or a synchronous handler) plus send/call/reply.

    Messages beyond ``max_pending`` bounce to their sender with RESOURCE_EXHAUSTED.
    With ``handler`` set, every message is passed to it synchronously on arrival
    (no mailbox; the fastest path, used by benches).
    """

    def __init__(self, plane: DataPlane, ref: AgentRef, max_pending: int,
                 handler: Callable[[Message], Any] | None = None) -> None:
        self.plane = plane
        self.ref = ref
        self.max_pending = max_pending
        self.handler = handler
        self._mailbox: deque[Message] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.delivered = 0
        self.bounced = 0

    def offer(self, message: Message) -> bool:
        """Deliver one message; False when the mailbox is full (the caller bounces it)."""
        if self.handler is not None:
            self.delivered += 1
            self.handler(message)
            return True
        if len(self._mailbox) >= self.max_pending:
            self.bounced += 1
            return False
        self._mailbox.append(message)
        self.delivered += 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    def pending(self) -> int:
        """Messages waiting in the mailbox."""
        return len(self._mailbox)

    def receive_nowait(self) -> Message | None:
        """The next message, or None when the mailbox is empty."""
        return self._mailbox.popleft() if self._mailbox else None

    async def receive(self, timeout: float | None = None) -> Message:
        """Wait for the next message (TimeoutError after ``timeout`` seconds)."""
        async with asyncio.timeout(timeout):
            while not self._mailbox:
                if self.closed:
                    raise DataPlaneError("endpoint closed")
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        return self._mailbox.popleft()

    def __aiter__(self) -> LocalEndpoint:
        return self

    async def __anext__(self) -> Message:
        if self.closed and not self._mailbox:
            raise StopAsyncIteration
        try:
            return await self.receive()
        except DataPlaneError:
            raise StopAsyncIteration from None

    async def send(self, to: Destination, payload: bytes, *, channel: int | str | None = None,
                   acknowledged: bool = False, traceparent: str = "") -> list[int]:
        """Send a one-way message; returns the message id(s). See :meth:`DataPlane.cast`."""
        return await self.plane.cast(self.ref, to, payload, channel=channel, acknowledged=acknowledged,
                                     traceparent=traceparent)

    def send_nowait(self, to: Destination, payload: bytes, *, channel: int | str | None = None,
                    acknowledged: bool = False) -> list[int]:
        """Send without waiting for outbound queue space (raises ResourceExhausted when full)."""
        return self.plane.router.cast(self.ref, to, payload, channel=channel, acknowledged=acknowledged)

    async def call(self, to: Destination, payload: bytes, *, timeout: float | None = None,
                   channel: int | str | None = None, traceparent: str = "") -> Message:
        """Send a call and wait for its reply. See :meth:`DataPlane.call`."""
        return await self.plane.call(self.ref, to, payload, timeout=timeout, channel=channel,
                                     traceparent=traceparent)

    def reply(self, request: Message, payload: bytes) -> None:
        """Answer a call (a no-op for casts)."""
        if request.is_call:
            self.plane.reply(self.ref, AgentRef.from_proto(request.envelope.sender), request.id, payload,
                             channel=request.channel)

    async def register_name(self, name: str) -> None:
        """Register a name for this endpoint in the registry."""
        await self.plane.registry.register_name(self.ref.tenant, name, self.ref)

    async def join_group(self, group: str) -> None:
        """Join a group."""
        await self.plane.registry.join_group(self.ref.tenant, group, self.ref)

    def close(self) -> None:
        """Remove the endpoint from the data plane; later messages to it bounce with NOT_FOUND."""
        if not self.closed:
            self.closed = True
            self.plane.close_endpoint(self)
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)

    def statistics(self) -> dict[str, int]:
        """Snapshot: delivered, bounced, pending."""
        return {"delivered": self.delivered, "bounced": self.bounced, "pending": len(self._mailbox)}
