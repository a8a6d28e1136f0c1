"""Client for CoordinatorService: auctions, negotiations, votes, markets, variables and the ledger.

``CoordinatorClient`` is async; ``SyncCoordinatorClient`` is the same API, blocking::

    async with CoordinatorClient(["127.0.0.1:7200", "127.0.0.1:7201"]) as coord:
        auction = await coord.create_auction("sealed", {"pricing": "second"})
        await coord.submit_bid(auction.id, {"type": "bid", "bidder": "a", "amount": 5})
        await coord.close_instance(auction.id)

Any node can be given: a standby answers WRONG_NODE with the leader's address
and the client follows it. While a failover is under way (no leader, a write
that was not confirmed durable, or the connection to the leader lost under a
live call, which gRPC reports as UNAVAILABLE or ``INTERNAL: Internal error
from Core``) calls are retried on the other endpoints until
``failover_timeout``. Which calls are retried after a lost connection:

- reads (Get*, List*, GetBook, VariableHistory, GetBalance, ...): always;
- creates, submits (SubmitBid, SubmitBids, Negotiate, CastVote, PlaceOrder,
  CancelOrder) and the ledger (Deposit, Transfer): always, because each carries
  an idempotency key the client generates once per call (``instance_id``,
  ``client_event_id``, ``client_op_id``), so an attempt that did land is
  answered again, not applied twice;
- CancelAuction, CloseInstance, CreateVariable and SetVariable (a
  compare-and-set) have no key: they are retried only when the request cannot
  have reached the server (the connection was refused); when the connection
  broke mid-call they raise ``Unavailable`` saying the call may have been
  applied, so the caller checks the state before trying again.

A server's own answers are not retried, except UNAVAILABLE with reason
WRONG_NODE, NOT_DURABLE or ETCD_UNAVAILABLE (nothing was applied).
Errors raise the :mod:`mabeam_client.errors` tree.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from mabeam.v1 import coordinator_pb2 as pb
from mabeam.v1 import coordinator_pb2_grpc
from mabeam_client.errors import MabeamError, Unavailable, connection_lost, translate
from mabeam_client.security import ClientSecurity, open_channel
from mabeam_client.sync import SyncFace
from mabeam_client.types import (
    Balance,
    Book,
    CoordinatorLeader,
    EventResult,
    Instance,
    InstanceEvent,
    MechanismKind,
    Trade,
    TransferResult,
    Variable,
)

RETRYABLE_REASONS = {"WRONG_NODE", "NOT_DURABLE", "ETCD_UNAVAILABLE", ""}
#: HTTP/2 keepalive on every coordinator channel: a leader that goes silent (its host cut off, its process
#: paused) keeps the TCP connection open and never ends a stream, so without pings a bid stream on it waited
#: forever (the netns test bed). A ping every 2 s that is not answered within 2 s breaks the connection
#: (ping_timeout too: gRPC may send its own ping in place of the keepalive one, and that one waits 60 s by
#: default); the stream then reopens on the new leader. A new connection to a silent server is given 2 s
#: (min_reconnect_backoff is gRPC's connect deadline; 20 s by default, which a redirect back to the silent
#: leader paid in full). The coordinator accepts pings this often (coordinator/daemon.py).
KEEPALIVE_OPTIONS = [("grpc.keepalive_time_ms", 2000), ("grpc.keepalive_timeout_ms", 2000),
                     ("grpc.http2.max_pings_without_data", 0), ("grpc.http2.ping_timeout_ms", 2000),
                     ("grpc.min_reconnect_backoff_ms", 2000)]
#: Calls without an idempotency key: a retry after a connection lost mid-call could fail for an attempt that landed.
NOT_IDEMPOTENT = frozenset({"CancelAuction", "CloseInstance", "CreateVariable", "SetVariable"})
# What gRPC says when the connection was never made (so the request was never sent).
_NEVER_SENT = ("failed to connect to all addresses", "Connection refused", "connections to all backends failing")


def retryable(method: str, error: grpc.RpcError, translated: MabeamError) -> bool:
    """Whether another attempt (here or on another endpoint) is safe and may succeed (see the module docstring)."""
    if connection_lost(error):
        if method not in NOT_IDEMPOTENT:
            return True
        details = (error.details() if hasattr(error, "details") else "") or ""
        return any(marker in details for marker in _NEVER_SENT)
    return error.code() == grpc.StatusCode.UNAVAILABLE and translated.reason in RETRYABLE_REASONS


def _final_error(method: str, endpoint: str, error: grpc.RpcError, translated: MabeamError) -> MabeamError:
    """The error a caller gets: a lost connection is UNAVAILABLE, never gRPC's INTERNAL."""
    if connection_lost(error) and error.code() != grpc.StatusCode.UNAVAILABLE:
        applied = " and may have been applied: check before retrying" if method in NOT_IDEMPOTENT else ""
        return Unavailable(f"the connection to {endpoint} was lost during {method}{applied} ({translated.message})")
    return translated


def leader_hint(error: grpc.RpcError) -> str | None:
    """The leader address a WRONG_NODE error carries in ErrorInfo metadata (None if absent or empty)."""
    translated = translate(error)
    return (translated.metadata.get("leader") or None) if translated.reason == "WRONG_NODE" else None


def _json(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class CoordinatorClient:
    """Async CoordinatorService client that finds and follows the active coordinator."""

    def __init__(self, endpoints: str | Sequence[str], timeout: float = 10.0, failover_timeout: float = 15.0,
                 security: ClientSecurity | None = None) -> None:
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        self.security = security
        if not self.endpoints:
            raise ValueError("at least one coordinator endpoint is required")
        self.timeout = timeout
        self.failover_timeout = failover_timeout
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._current = self.endpoints[0]
        self.redirects = 0

    def _stub(self, endpoint: str) -> coordinator_pb2_grpc.CoordinatorServiceStub:
        channel = self._channels.get(endpoint)
        if channel is None:
            channel = self._channels[endpoint] = open_channel(endpoint, self.security, KEEPALIVE_OPTIONS)
        return coordinator_pb2_grpc.CoordinatorServiceStub(channel)

    async def close(self) -> None:
        """Close every channel."""
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    async def __aenter__(self) -> CoordinatorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: str, request: Any) -> Any:
        deadline = time.monotonic() + self.failover_timeout
        tried = 0
        while True:
            endpoint = self._current
            try:
                return await getattr(self._stub(endpoint), method)(request, timeout=self.timeout)
            except grpc.RpcError as error:
                translated = translate(error)
                if not retryable(method, error, translated) or time.monotonic() >= deadline:
                    raise _final_error(method, endpoint, error, translated) from None
                hint = leader_hint(error)
                if hint and hint != endpoint:
                    self._current = hint
                    self.redirects += 1
                    continue
                if translated.reason in ("", "ETCD_UNAVAILABLE") or not hint:
                    tried += 1
                    self._current = self.endpoints[tried % len(self.endpoints)]
                await asyncio.sleep(min(0.05 * tried, 0.2) if tried else 0.05)

    async def _stream(self, method: str, request: Any, resume: Any = None) -> AsyncIterator[Any]:
        """A watch: served by every node from etcd, so no redirect is needed.

        When the connection breaks (the node died) the watch reopens on the next endpoint from the
        cursor ``resume(request, item)`` advanced past each item, until ``failover_timeout`` passes
        without an item; a watch without ``resume`` raises instead.
        """
        deadline: float | None = None
        tried = 0
        while True:
            endpoint = self._current
            call = getattr(self._stub(endpoint), method)(request)
            try:
                async for item in call:
                    deadline = None
                    if resume is not None:
                        resume(request, item)
                    yield item
                return
            except grpc.RpcError as error:
                translated = translate(error)
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + self.failover_timeout
                if resume is None or not retryable(method, error, translated) or now >= deadline:
                    raise _final_error(method, endpoint, error, translated) from None
                tried += 1
                self._current = self.endpoints[tried % len(self.endpoints)]
                await asyncio.sleep(min(0.05 * tried, 0.2))
            finally:
                call.cancel()

    async def leader(self) -> CoordinatorLeader:
        """Who leads the coordinator role (answered by any node)."""
        return CoordinatorLeader.from_proto(await self._call("GetCoordinatorLeader", pb.GetCoordinatorLeaderRequest()))

    async def list_mechanisms(self) -> list[MechanismKind]:
        """The mechanism kinds the coordinator runs: family, deadline fields, closes/opens fields (any node)."""
        response = await self._call("ListMechanisms", pb.ListMechanismsRequest())
        return [MechanismKind.from_proto(kind) for kind in response.kinds]

    async def mechanism(self, kind: str) -> MechanismKind:
        """One kind's description; ValueError naming the known kinds when the coordinator does not run it."""
        kinds = await self.list_mechanisms()
        for described in kinds:
            if described.kind == kind:
                return described
        raise ValueError(f"unknown mechanism kind {kind!r}; the coordinator runs {sorted(k.kind for k in kinds)}")

    # -- instances ----------------------------------------------------------------

    def _create_request(self, kind: str, config: Any, tenant: str, instance_id: str | None, escrow: bool,
                        seller: str, bind_variable: str, bind_field: str) -> pb.CreateInstanceRequest:
        return pb.CreateInstanceRequest(tenant=tenant, kind=kind, config_json=_json(config),
                                        instance_id=instance_id or uuid.uuid4().hex[:16], escrow=escrow,
                                        seller=seller, bind_variable=bind_variable, bind_field=bind_field)

    async def create_auction(self, kind: str, config: Any, tenant: str = "", instance_id: str | None = None,
                             escrow: bool = False, seller: str = "", bind_variable: str = "",
                             bind_field: str = "") -> Instance:
        """Create an auction (sealed, english, dutch, multi_unit, combinatorial); times are absolute ms."""
        return Instance.from_proto(await self._call("CreateAuction", self._create_request(
            kind, config, tenant, instance_id, escrow, seller, bind_variable, bind_field)))

    async def create_negotiation(self, kind: str, config: Any, tenant: str = "",
                                 instance_id: str | None = None) -> Instance:
        """Create a contract_net, alternating_offers or mediated_bargaining session."""
        return Instance.from_proto(await self._call(
            "CreateNegotiation", self._create_request(kind, config, tenant, instance_id, False, "", "", "")))

    async def create_vote(self, config: Any, tenant: str = "", instance_id: str | None = None,
                          bind_variable: str = "", bind_field: str = "decision") -> Instance:
        """Create a vote; with ``bind_variable`` its decision sets that variable."""
        return Instance.from_proto(await self._call("CreateVote", self._create_request(
            "vote", config, tenant, instance_id, False, "", bind_variable, bind_field if bind_variable else "")))

    async def create_market(self, kind: str, config: Any | None = None, tenant: str = "",
                            instance_id: str | None = None, escrow: bool = False) -> Instance:
        """Create a double_auction or call_market."""
        return Instance.from_proto(await self._call("CreateMarket", self._create_request(
            kind, config or {}, tenant, instance_id, escrow, "", "", "")))

    async def get(self, instance_id: str, family: str = "auction") -> Instance:
        """An instance's state, outcome and receipt (family: auction, negotiation, vote, market)."""
        method = {"auction": "GetAuction", "negotiation": "GetNegotiation", "vote": "GetVote",
                  "market": "GetMarket"}[family]
        return Instance.from_proto(await self._call(method, pb.GetInstanceRequest(id=instance_id)))

    async def get_auction(self, instance_id: str) -> Instance:
        """An auction's state, outcome and receipt."""
        return await self.get(instance_id, "auction")

    async def list_instances(self, tenant: str = "", state: str = "") -> list[Instance]:
        """Every instance of a tenant, optionally by state."""
        response = await self._call("ListAuctions", pb.ListInstancesRequest(tenant=tenant, state=state))
        return [Instance.from_proto(instance) for instance in response.instances]

    async def cancel(self, instance_id: str, reason: str = "") -> Instance:
        """Cancel an open instance (escrow released)."""
        return Instance.from_proto(await self._call("CancelAuction",
                                                    pb.CancelInstanceRequest(id=instance_id, reason=reason)))

    async def close_instance(self, instance_id: str) -> Instance:
        """Close an instance now (explicit Close)."""
        return Instance.from_proto(await self._call("CloseInstance", pb.CloseInstanceRequest(id=instance_id)))

    async def _submit(self, method: str, instance_id: str, event: Any,
                      client_event_id: str | None) -> EventResult:
        request = pb.SubmitEventRequest(id=instance_id, event_json=_json(event),
                                        client_event_id=client_event_id or uuid.uuid4().hex)
        return EventResult.from_proto(await self._call(method, request))

    async def submit_bid(self, instance_id: str, event: Any, client_event_id: str | None = None
                         ) -> EventResult:
        """Submit a bid; acknowledged only once durable; safe to retry with the same client_event_id."""
        return await self._submit("SubmitBid", instance_id, event, client_event_id)

    def bid_stream(self) -> BidStream:
        """A SubmitBids stream: many bids in flight on one call, each acknowledged once durable.

        Use as ``async with coord.bid_stream() as bids: await bids.submit(auction_id, event)``;
        concurrent ``submit`` calls share the stream (what is queued goes out in one message).
        """
        return BidStream(self)

    async def negotiate(self, instance_id: str, event: Any, client_event_id: str | None = None
                        ) -> EventResult:
        """One negotiation event."""
        return await self._submit("Negotiate", instance_id, event, client_event_id)

    async def cast_vote(self, instance_id: str, event: Any, client_event_id: str | None = None
                        ) -> EventResult:
        """One ballot, e.g. {"type": "cast", "voter": "a", "choice": "x"}."""
        return await self._submit("CastVote", instance_id, event, client_event_id)

    async def place_order(self, instance_id: str, event: Any, client_event_id: str | None = None
                          ) -> EventResult:
        """A limit or market order (or clear)."""
        return await self._submit("PlaceOrder", instance_id, event, client_event_id)

    async def cancel_order(self, instance_id: str, order_id: str, trader: str,
                           client_event_id: str | None = None) -> EventResult:
        """Cancel a resting order."""
        return EventResult.from_proto(await self._call("CancelOrder", pb.CancelOrderRequest(
            id=instance_id, order_id=order_id, trader=trader, client_event_id=client_event_id or uuid.uuid4().hex)))

    async def book(self, instance_id: str) -> Book:
        """A market's price levels."""
        return Book.from_proto(await self._call("GetBook", pb.GetInstanceRequest(id=instance_id)))

    async def watch(self, instance_id: str, from_seq: int = 0) -> AsyncIterator[InstanceEvent]:
        """Accepted events, then a final message with final_state set."""
        async for item in self._stream("WatchAuction", pb.WatchInstanceRequest(id=instance_id, from_seq=from_seq),
                                       _resume_events):
            yield InstanceEvent.from_proto(item)

    async def watch_trades(self, instance_id: str, from_seq: int = 0) -> AsyncIterator[Trade]:
        """A market's trades."""
        # One event may make several trades, so a reconnect resumes at the last trade's seq and skips
        # the trades of that seq already yielded (the replay is deterministic).
        request = pb.WatchInstanceRequest(id=instance_id, from_seq=from_seq)
        last_seq, yielded = 0, set[bytes]()
        async for item in self._stream("WatchTrades", request, _resume_trades):
            key = item.SerializeToString(deterministic=True)
            if item.seq == last_seq and key in yielded:
                continue
            if item.seq != last_seq:
                last_seq, yielded = item.seq, set[bytes]()
            yielded.add(key)
            yield Trade.from_proto(item)

    # -- variables -------------------------------------------------------------------

    async def create_variable(self, name: str, schema: Any, initial: Any, tenant: str = "",
                              history_limit: int = 0) -> Variable:
        """Create a typed variable at version 1."""
        return Variable.from_proto(await self._call("CreateVariable", pb.CreateVariableRequest(
            tenant=tenant, name=name, schema_json=_json(schema), initial_json=json.dumps(initial),
            history_limit=history_limit)))

    async def get_variable(self, name: str, tenant: str = "") -> Variable:
        """The current version."""
        return Variable.from_proto(await self._call("GetVariable", pb.GetVariableRequest(tenant=tenant, name=name)))

    async def list_variables(self, tenant: str = "") -> list[Variable]:
        """A tenant's variables."""
        response = await self._call("ListVariables", pb.ListVariablesRequest(tenant=tenant))
        return [Variable.from_proto(variable) for variable in response.variables]

    async def set_variable(self, name: str, value: Any, expected_version: int, tenant: str = "") -> Variable:
        """Compare-and-set; raises Aborted (reason VERSION_MISMATCH) when the version is stale."""
        return Variable.from_proto(await self._call("SetVariable", pb.SetVariableRequest(
            tenant=tenant, name=name, value_json=json.dumps(value), expected_version=expected_version)))

    async def variable_history(self, name: str, tenant: str = "") -> list[Variable]:
        """Kept versions, oldest first."""
        response = await self._call("VariableHistory", pb.VariableHistoryRequest(tenant=tenant, name=name))
        return [Variable.from_proto(variable) for variable in response.versions]

    async def watch_variable(self, name: str, from_version: int = 0, tenant: str = "") -> AsyncIterator[Variable]:
        """Versions from ``from_version`` (0: current), then each new one, in order."""
        request = pb.WatchVariableRequest(tenant=tenant, name=name, from_version=from_version)
        async for item in self._stream("WatchVariable", request, _resume_versions):
            yield Variable.from_proto(item)

    # -- ledger -------------------------------------------------------------------------

    async def deposit(self, agent: str, amount: int, tenant: str = "", client_op_id: str | None = None
                      ) -> Balance:
        """Credit an account."""
        return Balance.from_proto(await self._call("Deposit", pb.DepositRequest(
            tenant=tenant, agent=agent, amount=amount, client_op_id=client_op_id or uuid.uuid4().hex)))

    async def transfer(self, from_agent: str, to_agent: str, amount: int, tenant: str = "",
                       client_op_id: str | None = None) -> TransferResult:
        """Move credit; raises FailedPrecondition (INSUFFICIENT_FUNDS) rather than overdraw."""
        return TransferResult.from_proto(await self._call("Transfer", pb.TransferRequest(
            tenant=tenant, from_agent=from_agent, to_agent=to_agent, amount=amount,
            client_op_id=client_op_id or uuid.uuid4().hex)))

    async def balance(self, agent: str, tenant: str = "") -> Balance:
        """An account's available and held credit."""
        return Balance.from_proto(await self._call("GetBalance", pb.GetBalanceRequest(tenant=tenant, agent=agent)))

    async def balances(self, tenant: str = "") -> list[Balance]:
        """Every account of a tenant."""
        response = await self._call("ListBalances", pb.ListBalancesRequest(tenant=tenant))
        return [Balance.from_proto(balance) for balance in response.balances]


def _resume_events(request: pb.WatchInstanceRequest, item: pb.InstanceEvent) -> None:
    if item.seq:
        request.from_seq = item.seq + 1


def _resume_versions(request: pb.WatchVariableRequest, item: pb.Variable) -> None:
    request.from_version = item.version + 1


def _resume_trades(request: pb.WatchInstanceRequest, item: pb.TradeEvent) -> None:
    request.from_seq = item.seq


class BidStream:
    """Bids over one SubmitBids stream that follows the leader (see :meth:`CoordinatorClient.bid_stream`).

    Every bid carries a client_event_id (generated if not given). Bids submitted while a message is
    being written are sent together in the next one (at most ``MAX_BATCH``). When the stream ends
    with UNAVAILABLE (WRONG_NODE, NOT_DURABLE, ETCD_UNAVAILABLE, or the node is gone) the stream is
    reopened on the leader (following the WRONG_NODE hint; also when the connection was lost under the
    stream, which gRPC reports as UNAVAILABLE or INTERNAL) and every unacknowledged bid is sent again
    with the same id, which the coordinator answers once (a retry of a durable bid comes back marked
    ``duplicate``); this is retried until the client's ``failover_timeout`` passes without progress.
    A refused bid raises the SDK error for its code on that ``submit`` only.
    """

    MAX_BATCH = 256

    def __init__(self, client: CoordinatorClient) -> None:
        self.client = client
        self.reconnects = 0
        self._pending: dict[tuple[str, str], tuple[pb.SubmitEventRequest, asyncio.Future[EventResult]]] = {}
        self._outbox: list[pb.SubmitEventRequest] = []
        self._send_wake = asyncio.Event()
        self._closing = False
        self._runner: asyncio.Task[None] | None = None

    async def __aenter__(self) -> BidStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def submit(self, instance_id: str, event: Any, client_event_id: str | None = None
                     ) -> EventResult:
        """Submit one bid; returns once it is durable (or raises why it was refused)."""
        if self._closing:
            raise RuntimeError("the bid stream is closed")
        request = pb.SubmitEventRequest(id=instance_id, event_json=_json(event),
                                        client_event_id=client_event_id or uuid.uuid4().hex)
        key = (request.id, request.client_event_id)
        known = self._pending.get(key)
        if known is not None:
            future = known[1]
        else:
            future = asyncio.get_running_loop().create_future()
            self._pending[key] = (request, future)
            self._outbox.append(request)
            self._send_wake.set()
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Wait for every submitted bid's answer, half-close the stream and let it end."""
        self._closing = True
        if self._pending:
            await asyncio.gather(*(f for _, f in self._pending.values()), return_exceptions=True)
        self._send_wake.set()
        runner = self._runner
        if runner is not None and not runner.done():
            try:
                async with asyncio.timeout(self.client.timeout):  # not wait_for: 3.11's can swallow a cancel
                    await runner
            except (TimeoutError, MabeamError):
                pass

    def _fail_all(self, error: MabeamError) -> None:
        for _, future in self._pending.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: its submitter may have gone
        self._pending.clear()
        self._outbox = []

    def _answer(self, ack: pb.BidAck) -> None:
        entry = self._pending.pop((ack.id, ack.client_event_id), None)
        if entry is None or entry[1].done():
            return
        if ack.WhichOneof("outcome") == "error":
            entry[1].set_exception(translate(ack.error))
        else:
            entry[1].set_result(EventResult.from_proto(ack.result))

    async def _send(self, call: Any) -> None:
        try:
            while True:
                if not self._outbox:
                    if self._closing and not self._pending:
                        await call.done_writing()
                        return
                    self._send_wake.clear()
                    await self._send_wake.wait()
                    continue
                batch, self._outbox = self._outbox[:self.MAX_BATCH], self._outbox[self.MAX_BATCH:]
                await call.write(pb.SubmitBidsRequest(bids=batch))
        except (grpc.RpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            pass  # the call ended: the reading side sees its status and reopens or fails

    async def _run(self) -> None:
        client = self.client
        deadline: float | None = None
        tried = 0
        while self._pending or not self._closing:
            endpoint = client._current
            call = client._stub(endpoint).SubmitBids()
            self._outbox = [request for request, _ in self._pending.values()]  # all unacked, same ids
            self._send_wake.set()
            sender = asyncio.create_task(self._send(call))
            try:
                async for response in call:
                    deadline, tried = None, 0
                    for ack in response.acks:
                        self._answer(ack)
                if not self._pending:
                    return  # ended after our half-close with everything answered
            except grpc.RpcError as error:
                translated = translate(error)
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + client.failover_timeout
                # Every bid carries its client_event_id: resending after a lost connection is always safe.
                if not retryable("SubmitBids", error, translated) or now >= deadline:
                    self._fail_all(_final_error("SubmitBids", endpoint, error, translated))
                    return
                self.reconnects += 1
                hint = leader_hint(error)
                if hint and hint != endpoint:
                    client._current = hint
                    client.redirects += 1
                    continue
                if translated.reason in ("", "ETCD_UNAVAILABLE") or not hint:
                    tried += 1
                    client._current = client.endpoints[tried % len(client.endpoints)]
                await asyncio.sleep(min(0.05 * tried, 0.2) if tried else 0.05)
            finally:
                sender.cancel()
                call.cancel()


class SyncCoordinatorClient(SyncFace):
    """The blocking face of :class:`CoordinatorClient` (same methods, same arguments)."""

    def __init__(self, endpoints: str | Sequence[str], timeout: float = 10.0, failover_timeout: float = 15.0,
                 security: ClientSecurity | None = None) -> None:
        super().__init__(lambda: CoordinatorClient(endpoints, timeout, failover_timeout, security))


__all__ = ["BidStream", "CoordinatorClient", "MabeamError", "SyncCoordinatorClient", "leader_hint"]
