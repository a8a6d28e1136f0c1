"""External agents in Python: a process that *is* an agent on the mesh, outside agentd.

It attaches to its host's meshd over one ``MeshService.AttachAgent`` stream,
registers names and groups, and handles casts and calls one at a time, in
order; agentd's agents call it by name as they call each other, and it calls
them. The stream dropping (or meshd restarting) is survived: the agent
reconnects with exponential backoff and attaches again::

    async def handle_call(msg, ctx):
        return {"echo": msg, "from": ctx.agent.names}

    agent = ExternalAgent("127.0.0.1:7110", names=["py-echo"], on_call=handle_call)
    async with agent:                        # attached once this returns
        print(await agent.call("tally", "get"))

Payloads follow agentd's convention (docs/sdks.md): msgpack maps ``{"to", "msg"}``
for calls, ``{"to", "msg", "sender"}`` for casts, replies ``{"ok": value}`` or
``{"error": {"code", "message"}}``. A call made while handling a call keeps what
is left of that call's deadline, so a chain of calls shares one deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import msgpack

from mabeam.v1 import common_pb2, dataplane_pb2, mesh_pb2_grpc
from mabeam.v1 import external_agent_pb2 as pb
from mabeam_client.errors import MabeamError, error_for, translate
from mabeam_client.security import ClientSecurity, open_channel

log = logging.getLogger(__name__)

#: Absolute deadline (time.time() seconds) of the call being handled in this task, if any.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("mabeam_deadline", default=None)


def pack(value: Any) -> bytes:
    """msgpack bytes of a value (agentd's payload codec)."""
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: bytes) -> Any:
    """The value msgpack bytes encode."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


@dataclass(frozen=True)
class Incoming:
    """A cast or call delivered to the agent: the message, who sent it, and the call's deadline."""

    agent: ExternalAgent
    msg: Any
    sender: common_pb2.AgentRef
    is_call: bool
    #: Absolute deadline in time.time() seconds (None: a cast, or a call without one).
    deadline: float | None
    envelope: dataplane_pb2.Envelope = field(repr=False)

    def time_left(self) -> float | None:
        """Seconds left until the call's deadline (None without one)."""
        return None if self.deadline is None else max(0.0, self.deadline - time.time())


CallHandler = Callable[[Any, Incoming], Awaitable[Any]]
CastHandler = Callable[[Any, Incoming], Awaitable[None]]


class ExternalAgent:
    """An agent served over ``MeshService.AttachAgent``; see the module docstring.

    ``on_call(msg, incoming)`` returns the reply (an exception becomes an error reply:
    a :class:`MabeamError` keeps its code, anything else is UNKNOWN); ``on_cast(msg,
    incoming)`` handles a cast. ``attached`` is set while the stream is attached;
    ``attachments`` counts how often it attached (1 + reconnects).
    """

    def __init__(self, endpoint: str, names: Sequence[str] = (), groups: Sequence[str] = (), *,
                 on_call: CallHandler | None = None, on_cast: CastHandler | None = None, tenant: str = "",
                 max_pending: int = 0, reconnect: bool = True, backoff: tuple[float, float] = (0.05, 2.0),
                 security: ClientSecurity | None = None) -> None:
        self.endpoint = endpoint
        self.security = security
        self.names = list(names)
        self.groups = list(groups)
        self.tenant = tenant
        self.max_pending = max_pending
        self.on_call = on_call
        self.on_cast = on_cast
        self.reconnect = reconnect
        self.backoff = backoff
        self.ref: common_pb2.AgentRef | None = None
        self.attached = asyncio.Event()
        self.attachments = 0
        self.bounces: list[tuple[int, str]] = []
        self._channel: grpc.aio.Channel | None = None
        self._out: asyncio.Queue[pb.AgentStreamIn] | None = None
        self._results: dict[int, asyncio.Future[pb.AgentOutboundResult]] = {}
        self._ids = itertools.count(1)
        self._runner: asyncio.Task[None] | None = None
        self._last_error: BaseException | None = None

    async def __aenter__(self) -> ExternalAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, timeout: float = 30.0) -> None:
        """Start serving in the background and wait until attached (raises the attach error on timeout)."""
        self._runner = asyncio.create_task(self.run())
        try:
            async with asyncio.timeout(timeout):
                while not self.attached.is_set():
                    if self._runner.done():
                        self._runner.result()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.1):
                            await self.attached.wait()
        except TimeoutError:
            raise self._last_error or TimeoutError("not attached") from None

    async def stop(self) -> None:
        """Detach (the names go) and stop reconnecting."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def run(self) -> None:
        """Attach and serve; on a dropped stream reconnect with exponential backoff and jitter."""
        delay = self.backoff[0]
        while True:
            try:
                await self._serve_once()
                delay = self.backoff[0]
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                self._last_error = error_for(grpc.StatusCode.CANCELLED, "the stream was cancelled")
            except (grpc.RpcError, MabeamError) as error:
                self._last_error = translate(error) if isinstance(error, grpc.RpcError) else error
                log.info("external agent %s: stream ended: %s", self.names, self._last_error)
                if self.attachments:
                    delay = self.backoff[0]  # it had worked: start the backoff over
            if not self.reconnect:
                if self._last_error is not None:
                    raise self._last_error
                return
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.backoff[1])

    async def _serve_once(self) -> None:
        if self._channel is None:
            self._channel = open_channel(self.endpoint, self.security)
        stub = mesh_pb2_grpc.MeshServiceStub(self._channel)
        out: asyncio.Queue[pb.AgentStreamIn] = asyncio.Queue()
        out.put_nowait(pb.AgentStreamIn(attach=pb.AttachAgentRequest(
            tenant=self.tenant, names=self.names, groups=self.groups, max_pending=self.max_pending)))

        async def requests() -> Any:
            while True:
                yield await out.get()

        call = stub.AttachAgent(requests())
        deliveries: asyncio.Queue[pb.AgentDelivery] = asyncio.Queue()
        handler = asyncio.create_task(self._handle_loop(deliveries, out))
        try:
            async for message in call:
                which = message.WhichOneof("body")
                if which == "attached":
                    self.ref = message.attached.endpoint
                    self._out = out
                    self.attachments += 1
                    self.attached.set()
                elif which == "delivery":
                    deliveries.put_nowait(message.delivery)
                elif which == "result":
                    future = self._results.pop(message.result.request_id, None)
                    if future is not None and not future.done():
                        future.set_result(message.result)
        finally:
            self.attached.clear()
            self._out = None
            handler.cancel()
            call.cancel()
            for future in self._results.values():
                if not future.done():
                    future.set_exception(error_for(grpc.StatusCode.UNAVAILABLE, "the agent's stream ended"))
            self._results.clear()

    async def _handle_loop(self, deliveries: asyncio.Queue[pb.AgentDelivery],
                           out: asyncio.Queue[pb.AgentStreamIn]) -> None:
        while True:
            delivery = await deliveries.get()
            envelope = delivery.envelope
            if envelope.kind == dataplane_pb2.MESSAGE_KIND_ERROR:
                self.bounces.append((envelope.error_code, envelope.error_message))
                continue
            is_call = envelope.kind == dataplane_pb2.MESSAGE_KIND_CALL
            deadline = envelope.deadline_unix_ms / 1000 if is_call and envelope.deadline_unix_ms else None
            reply = b""
            try:
                body = unpack(delivery.payload)
                msg = body.get("msg") if isinstance(body, dict) else body
            except Exception as error:  # noqa: BLE001 - a bad payload answers INVALID_ARGUMENT, never crashes
                body, msg = None, None
                if is_call:
                    reply = pack({"error": {"code": "INVALID_ARGUMENT", "message": f"undecodable payload: {error}"}})
            if body is not None:
                incoming = Incoming(self, msg, envelope.sender, is_call, deadline, envelope)
                token = _deadline.set(deadline)
                try:
                    if is_call:
                        if self.on_call is None:
                            raise error_for(grpc.StatusCode.UNIMPLEMENTED, "this agent does not handle calls")
                        reply = pack({"ok": await self.on_call(msg, incoming)})
                    elif self.on_cast is not None:
                        await self.on_cast(msg, incoming)
                except asyncio.CancelledError:
                    raise
                except MabeamError as error:
                    reply = pack({"error": {"code": error.code.name, "message": error.message}})
                except Exception as error:  # noqa: BLE001 - the caller gets it as an error reply
                    log.exception("external agent handler failed")
                    reply = pack({"error": {"code": "UNKNOWN", "message": f"{type(error).__name__}: {error}"}})
                finally:
                    _deadline.reset(token)
            out.put_nowait(pb.AgentStreamIn(handled=pb.AgentHandled(delivery_id=delivery.delivery_id, reply=reply)))

    # -- calls and casts from the agent -------------------------------------------------------

    async def _outbound(self, to: str | common_pb2.AgentRef | dataplane_pb2.GroupAddress, payload: bytes,
                        call: bool, timeout_ms: int) -> pb.AgentOutboundResult:
        out = self._out
        if out is None:
            raise error_for(grpc.StatusCode.UNAVAILABLE, "the agent is not attached")
        request = pb.AgentOutbound(request_id=next(self._ids), payload=payload, call=call, timeout_ms=timeout_ms)
        if isinstance(to, str):
            request.to_name = to
        elif isinstance(to, common_pb2.AgentRef):
            request.to_agent.CopyFrom(to)
        else:
            request.to_group.CopyFrom(to)
        future: asyncio.Future[pb.AgentOutboundResult] = asyncio.get_running_loop().create_future()
        self._results[request.request_id] = future
        out.put_nowait(pb.AgentStreamIn(outbound=request))
        result = await future
        if result.code:
            raise error_for(result.code, result.message)
        return result

    async def call(self, to: str, msg: Any, timeout: float | None = None) -> Any:
        """Call an agent by name; its reply, or its error as the SDK exception. Inside a call handler the
        timeout is capped by what is left of the handled call's deadline."""
        deadline = _deadline.get()
        if deadline is not None:
            left = deadline - time.time()
            if left <= 0:
                raise error_for(grpc.StatusCode.DEADLINE_EXCEEDED, "the call being handled is past its deadline")
            timeout = left if timeout is None else min(timeout, left)
        result = await self._outbound(to, pack({"to": to, "msg": msg}), True, int((timeout or 5.0) * 1000) or 1)
        body = unpack(result.payload)
        if isinstance(body, dict) and "error" in body:
            error = body["error"]
            raise error_for(str(error.get("code", "")), error.get("message", ""))
        return body.get("ok") if isinstance(body, dict) else body

    async def cast(self, to: str, msg: Any) -> None:
        """Cast to an agent by name (NotFound at once when the name is unknown)."""
        sender = self.names[0] if self.names else None
        await self._outbound(to, pack({"to": to, "msg": msg, "sender": sender}), False, 0)

    async def cast_group(self, group: str, msg: Any, mode: str = "all") -> None:
        """Cast to a group's members cluster-wide ("all") or to one of them ("one")."""
        address = dataplane_pb2.GroupAddress(
            group=group, mode=dataplane_pb2.GROUP_MODE_ONE if mode == "one" else dataplane_pb2.GROUP_MODE_ALL)
        body = {"group": group, "mode": mode, "msg": msg, "sender": self.names[0] if self.names else None,
                "origin": b""}
        await self._outbound(address, pack(body), False, 0)


__all__ = ["ExternalAgent", "Incoming", "pack", "unpack"]
