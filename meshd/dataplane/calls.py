"""Calls waiting for their reply: registration, deadlines, replies, and failing them when a node goes.

Every CALL that leaves this node (from an in-process caller or an attached
one) is registered here under its message id until the REPLY or ERROR with
that ``correlation_id`` comes back, its deadline passes (DeadlineExceeded), or
the node it went to leaves or goes silent (Unavailable at once). An
in-process caller waits on a future; an attached caller is told with an
ERROR envelope handed to ``deliver`` (the router's local delivery).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Literal

from mabeam.dataplane import envelope as wire
from mabeam.dataplane.errors import DataPlaneError, DeadlineExceeded, error_from_envelope
from mabeam.dataplane.message import AgentRef, Message
from mabeam.v1 import dataplane_pb2 as pb
from meshd.dataplane.peers import PendingCall


class PendingCalls:
    """The calls of one data plane that wait for a reply (see the module docstring)."""

    def __init__(self, ids: Iterator[int], deliver: Callable[[pb.Envelope, bytes], None]) -> None:
        self._ids = ids
        self._deliver = deliver
        self._calls: dict[int, PendingCall] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Answers dropped because they came from another tenant than the caller's.
        self.cross_tenant_answers = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Use ``loop`` for the deadline timers."""
        self._loop = loop

    def __len__(self) -> int:
        return len(self._calls)

    def register(self, call_id: int, future: asyncio.Future[Message] | None, caller: AgentRef, node_id: str,
                 timeout: float) -> PendingCall:
        """Wait for the reply to ``call_id`` (sent to ``node_id``) for at most ``timeout`` seconds."""
        pending = PendingCall(call_id, future, caller, node_id)
        self._calls[call_id] = pending
        assert self._loop is not None
        pending.timer = self._loop.call_later(timeout, self._expire, call_id)
        return pending

    def forget(self, pending: PendingCall) -> None:
        """Stop waiting (the call was answered, or could not be sent)."""
        self._calls.pop(pending.id, None)
        if pending.timer is not None:
            pending.timer.cancel()

    def answer(self, env: pb.Envelope, payload: bytes) -> Literal["done", "late", "forward"]:
        """A REPLY or ERROR arrived: complete its call.

        ``done``: an in-process caller got it; ``late``: a REPLY nobody waits for (dropped);
        ``forward``: deliver it to its addressee (an attached caller, or an ERROR bouncing a cast).
        """
        pending = self._calls.get(env.correlation_id)
        if pending is None:
            return "late" if env.kind == wire.REPLY else "forward"
        if (env.tenant or "default") != pending.caller.tenant:
            # Only the caller's tenant answers its calls (the envelope's tenant is set by meshd): an answer
            # from another tenant that guessed the id is dropped, and the call keeps waiting.
            self.cross_tenant_answers += 1
            return "late"
        del self._calls[env.correlation_id]
        if pending.timer is not None:
            pending.timer.cancel()
        future = pending.future
        if future is None:
            return "forward"
        if not future.done():
            if env.kind == wire.REPLY:
                future.set_result(Message(env, payload))
            else:
                future.set_exception(error_from_envelope(env))
        return "done"

    def _expire(self, call_id: int) -> None:
        pending = self._calls.pop(call_id, None)
        if pending is not None:
            self.fail(pending, DeadlineExceeded("no reply before the deadline"))

    def fail(self, pending: PendingCall, error: DataPlaneError) -> None:
        """Fail one call with ``error`` (an attached caller gets an ERROR envelope)."""
        if pending.timer is not None:
            pending.timer.cancel()
        if pending.future is not None:
            if not pending.future.done():
                pending.future.set_exception(error)
            return
        env = pb.Envelope(version=wire.VERSION, id=next(self._ids), kind=wire.ERROR, channel=wire.HIGH,
                          tenant=pending.caller.tenant, correlation_id=pending.id,
                          error_code=error.code_value, error_message=error.message)
        env.to_agent.CopyFrom(pending.caller.to_proto())
        self._deliver(env, b"")

    def fail_node(self, node_id: str, error: DataPlaneError) -> None:
        """Fail every call waiting on ``node_id`` (it left, or went silent)."""
        for pending in [p for p in self._calls.values() if p.node_id == node_id]:
            self._calls.pop(pending.id, None)
            self.fail(pending, error)

    def fail_all(self, error: DataPlaneError) -> None:
        """Fail every waiting call (the data plane stops)."""
        calls, self._calls = self._calls, {}
        for pending in calls.values():
            self.fail(pending, error)
