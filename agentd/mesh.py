"""agentd on the mesh: names in meshd's registry, cross-node casts and calls over the data plane.

One agentd attaches to its host's meshd as one data-plane endpoint (agent id
``agentd``). When an agent takes a name, the name is registered in meshd for
that endpoint, under the node's etcd lease, so it vanishes with the node.
A cast or call to a name no local worker hosts goes out through meshd; meshd
resolves the name from its cache and routes it to the agentd that registered
it, which hands it to the agent by the envelope's ``to_name``.

Payloads between agentd processes are msgpack (never pickle) and name their
destination, because meshd resolves a name to the agentd endpoint on the way:
a cast carries ``{"to": name, "msg": m, "sender": s}``, a call
``{"to": name, "msg": m}``; a call's reply is ``{"ok": value}`` or
``{"error": {"code": "NOT_FOUND", "message": ...}}``, turned back into the
typed :mod:`agentd.errors` exception on the calling side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import msgpack

from agentd.errors import AgentError, CallTimeout, NoSuchAgent, Unavailable, error_from_code
from agentd.workers import WorkerPool
from meshd.dataplane.attach import AttachedEndpoint
from meshd.dataplane.endpoint import Message
from meshd.dataplane.errors import DataPlaneError, DeadlineExceeded, NotFound

log = logging.getLogger(__name__)

ENDPOINT_ID = "agentd"
MAX_INFLIGHT_CALLS = 256


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(payload: bytes) -> Any:
    return msgpack.unpackb(payload, raw=False, strict_map_key=False)


def _agent_error(error: DataPlaneError) -> AgentError:
    if isinstance(error, NotFound):
        return NoSuchAgent(error.message)
    if isinstance(error, DeadlineExceeded):
        return CallTimeout(error.message)
    return error_from_code(error.code.name, error.message)


class MeshLink:
    """The :class:`agentd.workers.MeshBridge` over an attached data-plane endpoint.

    ``start()`` attaches and runs the loops in a TaskGroup owned by the link;
    ``close()`` detaches (meshd then removes the names this agentd registered).
    """

    def __init__(self, pool: WorkerPool, attach_address: str, tenant: str = "") -> None:
        self.pool = pool
        self.attach_address = attach_address
        self.tenant = tenant
        self.endpoint: AttachedEndpoint | None = None
        self._outbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._group: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._inflight = asyncio.Semaphore(MAX_INFLIGHT_CALLS)
        self.failures = 0

    async def start(self) -> None:
        """Attach to meshd and start serving inbound messages."""
        self.endpoint = await AttachedEndpoint.connect(self.attach_address, ENDPOINT_ID, self.tenant or None)
        ready = asyncio.Event()
        self._runner = asyncio.create_task(self._run(ready))
        await ready.wait()

    async def _run(self, ready: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            group.create_task(self._outbound())
            group.create_task(self._inbound())
            ready.set()

    async def close(self) -> None:
        """Stop the loops and detach."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self.endpoint is not None:
            await self.endpoint.close()

    # --- MeshBridge: called by the worker pool (synchronous ones queue their work) ---

    def name_registered(self, name: str, agent_id: str) -> None:
        """Publish a local agent's name in meshd."""
        self._outbox.put_nowait(("register", name))

    def name_unregistered(self, name: str, agent_id: str) -> None:
        """Remove a local agent's name from meshd."""
        self._outbox.put_nowait(("unregister", name))

    def cast(self, to: str, msg: Any, sender: str | None) -> None:
        """Send to a named agent on another node (errors are logged and counted: casts are one-way)."""
        self._outbox.put_nowait(("cast", (to, msg, sender)))

    async def call(self, to: str, msg: Any, timeout: float) -> Any:
        """Call a named agent on another node; its reply or the typed error."""
        if self.endpoint is None:
            raise Unavailable("agentd is not attached to a meshd")
        try:
            reply = await self.endpoint.call(to, _pack({"to": to, "msg": msg}), timeout=timeout)
        except DataPlaneError as error:
            raise _agent_error(error) from None
        body = _unpack(bytes(reply.payload))
        if "error" in body:
            raise error_from_code(body["error"]["code"], body["error"]["message"])
        return body["ok"]

    # --- loops ---

    async def _outbound(self) -> None:
        assert self.endpoint is not None
        while True:
            op, arg = await self._outbox.get()
            try:
                if op == "register":
                    await self.endpoint.register_name(arg)
                elif op == "unregister":
                    await self.endpoint.unregister_name(arg)
                else:
                    to, msg, sender = arg
                    await self.endpoint.send(to, _pack({"to": to, "msg": msg, "sender": sender}))
            except (DataPlaneError, TimeoutError) as error:
                self.failures += 1
                log.warning("mesh %s %r failed: %s", op, arg if op != "cast" else arg[0], error)

    async def _inbound(self) -> None:
        assert self.endpoint is not None and self._group is not None
        async for message in self.endpoint:
            if message.is_call:
                await self._inflight.acquire()
                self._group.create_task(self._answer(message))
            else:
                try:
                    body = _unpack(bytes(message.payload))
                    name = body["to"]
                    if not self.pool.hosts(name):
                        raise NoSuchAgent(f"no agent named {name!r} on this node")
                    self.pool.cast_nowait(name, body["msg"], body.get("sender"))
                except (AgentError, ValueError, KeyError, TypeError) as error:
                    self.failures += 1
                    log.warning("inbound cast dropped: %s", error)

    async def _answer(self, request: Message) -> None:
        assert self.endpoint is not None
        try:
            deadline_ms = request.envelope.deadline_unix_ms
            remaining = max(0.05, deadline_ms / 1000 - time.time()) if deadline_ms else 5.0
            try:
                body_in = _unpack(bytes(request.payload))
                name = body_in["to"]
                if not self.pool.hosts(name):
                    # Local only: forwarding back into the mesh could bounce between nodes forever.
                    raise NoSuchAgent(f"no agent named {name!r} on this node")
                value = await self.pool.call(name, body_in["msg"], timeout=remaining)
                body: dict[str, Any] = {"ok": value}
            except AgentError as error:
                body = {"error": {"code": error.code, "message": str(error)}}
            except (ValueError, TypeError, KeyError) as error:
                body = {"error": {"code": "INVALID_ARGUMENT", "message": f"undecodable call payload: {error}"}}
            with contextlib.suppress(DataPlaneError):
                await self.endpoint.reply(request, _pack(body))
        finally:
            self._inflight.release()
