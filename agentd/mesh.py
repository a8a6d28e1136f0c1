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

Process groups: when the first agent here joins a group, this agentd's endpoint
joins meshd's group of the same name; when the last one leaves (or exits), it
leaves. A group cast travels to meshd's group as ``{"group": g, "mode": m, "msg":
m, "sender": s, "origin": o}``; the receiving agentd delivers to its own members
only (all of them, or one in round-robin turn). In mode ``all`` meshd also hands
the sending agentd its own copy: ``origin`` (random per link) lets it drop that,
since it delivered to its members directly. A cast meshd bounces (unknown name,
empty group, full mailbox) comes back to the sending agent as DeliveryFailed.

Healing: when meshd detaches this agentd (meshd was paused past its expiry, or
restarted), the endpoint re-attaches by itself and registers every name and
group again (:mod:`mabeam.dataplane.attach`); meanwhile casts and calls fail at
once with UNAVAILABLE (reason DETACHED). A name another owner took meanwhile is
logged and counted (``agentd_mesh_events_total{kind="names_lost"}``), like
detachments and re-attaches.

Tenants: agentd attaches one endpoint per tenant it hosts agents of (agent id ``agentd``, the
default tenant's at start, another tenant's at its first name, group or send). meshd stamps the
endpoint's tenant on everything the endpoint sends and registers its names and groups in that
tenant, so a tenant's agents can reach, and be reached by, only their own tenant's names and
groups: the tenant of a message is set by meshd from the attachment, never by the payload. An
inbound message is delivered only among the agents of the tenant whose endpoint received it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

import msgpack

from agentd.errors import AgentError, CallTimeout, NoSuchAgent, Unavailable, error_from_code
from agentd.workers import DEFAULT_TENANT, WorkerPool
from mabeam.dataplane.attach import AttachedEndpoint
from mabeam.dataplane.errors import DataPlaneError, DeadlineExceeded, NotFound
from mabeam.dataplane.message import Group, Message

log = logging.getLogger(__name__)

ENDPOINT_ID = "agentd"
MAX_INFLIGHT_CALLS = 256
#: Casts remembered (by envelope id) so that a bounce from meshd reaches their sender.
MAX_REMEMBERED_CASTS = 4096


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

    def __init__(self, pool: WorkerPool, attach_address: str, tenant: str = DEFAULT_TENANT) -> None:
        self.pool = pool
        self.attach_address = attach_address
        self.tenant = tenant or DEFAULT_TENANT
        #: One attached endpoint per tenant (the default tenant's at start, others on first use).
        self.endpoints: dict[str, AttachedEndpoint] = {}
        self._attaching: dict[str, asyncio.Lock] = {}
        self._outbox: asyncio.Queue[tuple[str, Any, str]] = asyncio.Queue()
        self._group: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._inflight = asyncio.Semaphore(MAX_INFLIGHT_CALLS)
        self._sent: dict[tuple[str, int], tuple[str, str]] = {}  # (tenant, envelope id) -> (sending agent, to)
        self.origin = os.urandom(8)
        self.failures = 0

    @property
    def endpoint(self) -> AttachedEndpoint | None:
        """The default tenant's endpoint."""
        return self.endpoints.get(self.tenant)

    async def start(self) -> None:
        """Attach to meshd (as the default tenant) and start serving inbound messages."""
        endpoint = await AttachedEndpoint.connect(self.attach_address, ENDPOINT_ID, self.tenant)
        endpoint.on_name_lost = self._name_lost
        self.endpoints[self.tenant] = endpoint
        ready = asyncio.Event()
        self._runner = asyncio.create_task(self._run(ready))
        await ready.wait()

    async def _run(self, ready: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            group.create_task(self._outbound())
            group.create_task(self._inbound(self.endpoints[self.tenant], self.tenant))
            ready.set()

    async def _endpoint(self, tenant: str) -> AttachedEndpoint:
        """The endpoint of ``tenant``, attached (and served) on first use."""
        endpoint = self.endpoints.get(tenant)
        if endpoint is not None:
            return endpoint
        async with self._attaching.setdefault(tenant, asyncio.Lock()):
            endpoint = self.endpoints.get(tenant)
            if endpoint is None:
                if self._group is None:
                    raise Unavailable("agentd is not attached to a meshd")
                endpoint = await AttachedEndpoint.connect(self.attach_address, ENDPOINT_ID, tenant)
                endpoint.on_name_lost = lambda name, why, tenant=tenant: self._name_lost(name, why, tenant)
                self.endpoints[tenant] = endpoint
                self._group.create_task(self._inbound(endpoint, tenant))
        return endpoint

    async def close(self) -> None:
        """Stop the loops and detach every endpoint."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        for endpoint in list(self.endpoints.values()):
            await endpoint.close()

    @property
    def events(self) -> dict[str, int]:
        """Counts of the link's healing events (detached, reattached, names_lost), over every tenant's endpoint."""
        counts: dict[str, int] = {}
        for endpoint in self.endpoints.values():
            for kind, count in endpoint.events.items():
                counts[kind] = counts.get(kind, 0) + count
        return counts

    def _name_lost(self, name: str, why: str, tenant: str = DEFAULT_TENANT) -> None:
        """Another owner took a name of an agent here while this node's lease had lapsed: say so loudly."""
        log.error("the mesh name %r is no longer registered to this agentd (%s); the agent %s but other nodes "
                  "cannot reach it by that name", name, why, "keeps running" if self.pool.hosts(name, tenant) else "is gone")

    # --- MeshBridge: called by the worker pool (synchronous ones queue their work) ---

    def name_registered(self, name: str, agent_id: str, tenant: str = DEFAULT_TENANT) -> None:
        """Publish a local agent's name in meshd, in its tenant."""
        self._outbox.put_nowait(("register", name, tenant))

    def name_unregistered(self, name: str, agent_id: str, tenant: str = DEFAULT_TENANT) -> None:
        """Remove a local agent's name from meshd."""
        self._outbox.put_nowait(("unregister", name, tenant))

    def cast(self, to: str, msg: Any, sender: str | None, tenant: str = DEFAULT_TENANT) -> None:
        """Send to a named agent on another node (errors are logged and counted: casts are one-way)."""
        self._outbox.put_nowait(("cast", (to, msg, sender), tenant))

    def group_joined(self, group: str, tenant: str = DEFAULT_TENANT) -> None:
        """Join this agentd's endpoint of the tenant to meshd's group (its first local member joined)."""
        self._outbox.put_nowait(("join", group, tenant))

    def group_left(self, group: str, tenant: str = DEFAULT_TENANT) -> None:
        """Leave meshd's group (its last local member left)."""
        self._outbox.put_nowait(("leave", group, tenant))

    def send_group(self, group: str, msg: Any, mode: str, sender: str | None, tenant: str = DEFAULT_TENANT) -> None:
        """A group cast to every agentd in meshd's group ("all") or to one of them ("one")."""
        self._outbox.put_nowait(("gcast", (group, msg, mode, sender), tenant))

    async def call(self, to: str, msg: Any, timeout: float, tenant: str = DEFAULT_TENANT) -> Any:
        """Call a named agent of ``tenant`` on another node; its reply or the typed error."""
        if self.endpoint is None:
            raise Unavailable("agentd is not attached to a meshd")
        try:
            endpoint = await self._endpoint(tenant)
            reply = await endpoint.call(to, _pack({"to": to, "msg": msg}), timeout=timeout)
        except DataPlaneError as error:
            raise _agent_error(error) from None
        body = _unpack(bytes(reply.payload))
        if "error" in body:
            raise error_from_code(body["error"]["code"], body["error"]["message"])
        return body["ok"]

    # --- loops ---

    async def _outbound(self) -> None:
        while True:
            op, arg, tenant = await self._outbox.get()
            try:
                endpoint = await self._endpoint(tenant)
                if op == "register":
                    await endpoint.register_name(arg)
                elif op == "unregister":
                    await endpoint.unregister_name(arg)
                elif op == "join":
                    await endpoint.join_group(arg)
                elif op == "leave":
                    await endpoint.leave_group(arg)
                elif op == "gcast":
                    group, msg, mode, sender = arg
                    body = {"group": group, "mode": mode, "msg": msg, "sender": sender, "origin": self.origin}
                    # wait_for_quota=False: a throttled tenant's cast fails (QUOTA_EXCEEDED) rather than hold
                    # every tenant's outbound behind it.
                    self._remember(tenant, await endpoint.send(Group(group, mode), _pack(body), wait_for_quota=False),
                                   sender, f"group:{group}")
                else:
                    to, msg, sender = arg
                    self._remember(tenant, await endpoint.send(to, _pack({"to": to, "msg": msg, "sender": sender}),
                                                               wait_for_quota=False), sender, to)
            except (DataPlaneError, TimeoutError) as error:
                self.failures += 1
                log.warning("mesh %s %r failed: %s", op, arg[0] if op in ("cast", "gcast") else arg, error)
                if op in ("cast", "gcast") and arg[-1]:
                    code = error.code.name if isinstance(error, DataPlaneError) else "UNAVAILABLE"
                    self.pool.delivery_failed(arg[-1], arg[0], code, str(error), tenant)

    def _remember(self, tenant: str, envelope_id: int, sender: str | None, to: str) -> None:
        """Keep who sent a cast until meshd might bounce it (bounded: the oldest are forgotten)."""
        if sender:
            sent = self._sent
            sent[(tenant, envelope_id)] = (sender, to)
            if len(sent) > MAX_REMEMBERED_CASTS:
                del sent[next(iter(sent))]

    def _bounced(self, message: Message, tenant: str) -> None:
        """meshd (or a peer) bounced one of our casts: tell the sending agent, never drop it silently."""
        self.failures += 1
        error = message.error
        assert error is not None
        origin = self._sent.pop((tenant, message.envelope.correlation_id), None)
        if origin is None:
            log.warning("mesh bounced an anonymous cast: %s", error.message)
            return
        sender, to = origin
        self.pool.delivery_failed(sender, to, error.code.name, error.message, tenant)

    async def _inbound(self, endpoint: AttachedEndpoint, tenant: str) -> None:
        """Serve what ``tenant``'s endpoint receives: only that tenant's agents are reached."""
        assert self._group is not None
        async for message in endpoint:
            if message.is_call:
                await self._inflight.acquire()
                self._group.create_task(self._answer(message, endpoint, tenant))
            elif message.error is not None:
                self._bounced(message, tenant)
            else:
                try:
                    body = _unpack(bytes(message.payload))
                    if "group" in body:
                        self._deliver_group(body, tenant)
                        continue
                    name = body["to"]
                    if not self.pool.hosts(name, tenant):
                        raise NoSuchAgent(f"no agent named {name!r} on this node")
                    self.pool.cast_nowait(name, body["msg"], body.get("sender"), tenant=tenant)
                except (AgentError, ValueError, KeyError, TypeError) as error:
                    self.failures += 1
                    log.warning("inbound cast dropped: %s", error)

    def _deliver_group(self, body: dict[str, Any], tenant: str) -> None:
        """An inbound group cast: to this agentd's members of the tenant only (never back into the mesh)."""
        mode = body["mode"]
        if mode == "all" and body.get("origin") == self.origin:
            return  # our own copy: the members here got it directly
        self.pool.deliver_group(body["group"], body["msg"], "one" if mode == "one" else "all", tenant=tenant)

    async def _answer(self, request: Message, endpoint: AttachedEndpoint, tenant: str) -> None:
        try:
            deadline_ms = request.envelope.deadline_unix_ms
            remaining = max(0.05, deadline_ms / 1000 - time.time()) if deadline_ms else 5.0
            try:
                body_in = _unpack(bytes(request.payload))
                name = body_in["to"]
                if not self.pool.hosts(name, tenant):
                    # Local only: forwarding back into the mesh could bounce between nodes forever.
                    raise NoSuchAgent(f"no agent named {name!r} on this node")
                value = await self.pool.call(name, body_in["msg"], timeout=remaining, tenant=tenant)
                body: dict[str, Any] = {"ok": value}
            except AgentError as error:
                body = {"error": {"code": error.code.name, "message": error.message}}
            except (ValueError, TypeError, KeyError) as error:
                body = {"error": {"code": "INVALID_ARGUMENT", "message": f"undecodable call payload: {error}"}}
            with contextlib.suppress(DataPlaneError):
                await endpoint.reply(request, _pack(body))
        finally:
            self._inflight.release()
