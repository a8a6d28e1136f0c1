"""CoordinatorService: request validation and translation between protobuf and the engine.

Unary calls need the active coordinator: on a standby they fail with
UNAVAILABLE / WRONG_NODE naming the leader (see :class:`~coordinator.node.WrongNode`).
Watch streams are served by every node straight from etcd (the durable log
is the source of truth), so they survive a failover of the leader unchanged.
Every method validates its input first and raises a typed
:class:`~mabeam.errors.ServiceError` with a readable message (the daemon's
error interceptor answers it); nothing changes on a refused request.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from coordinator.engine import Engine, not_durable, not_found
from coordinator.instances import Ack, Instance
from coordinator.ledger import Account
from coordinator.mechanisms.base import Mechanism, mechanism_classes, registered_kinds
from coordinator.node import CoordinatorNode
from coordinator.store import CommitFailed
from coordinator.variables import DEFAULT_HISTORY, MAX_SCHEMA_BYTES, VariableError, VariableRecord, parse_json
from mabeam.errors import FieldViolation, ServiceError, raise_if
from mabeam.security.context import tenant_for, visible
from mabeam.structs import from_struct, to_list, to_struct
from mabeam.v1 import coordinator_pb2 as pb
from mabeam.v1 import coordinator_pb2_grpc

ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MAX_JSON_BYTES = 256 * 1024
MAX_AMOUNT = 10**12

T = TypeVar("T")


def _id(value: str, field: str, violations: list[FieldViolation], required: bool = True) -> str:
    if not value:
        if required:
            violations.append(FieldViolation(field, "is required"))
        return value
    if not ID_RE.match(value):
        violations.append(FieldViolation(field, f"{value[:80]!r} is not a valid id: 1-64 of letters, digits, _.- "
                                                 "starting with a letter, digit or _"))
    return value


def _tenant(value: str, violations: list[FieldViolation]) -> str:
    """The tenant a request acts in: the token's, another only for an admin (mabeam.security.context)."""
    return _id(tenant_for(value), "tenant", violations, required=False) or "default"


def _visible_id(engine: Engine, instance_id: str) -> str:
    """``instance_id`` when the caller may see that instance; another tenant's answers NOT_FOUND as a missing one.

    Engine lookups then find it (or raise their own NOT_FOUND for one that does not exist), so both cases
    answer the same status, reason and message: another tenant's ids leak nothing.
    """
    instance = engine.instances.get(instance_id)
    if instance is not None and not visible(instance.tenant):
        raise not_found(f"instance {instance_id!r}")  # worded as the engine words an unknown id
    return instance_id


def _json_object(text: str, field: str, violations: list[FieldViolation], limit: int = MAX_JSON_BYTES) -> Any:
    try:
        value = parse_json(text, field, limit)
    except VariableError as error:
        violations.append(FieldViolation(field, str(error)))
        return None
    if not isinstance(value, dict):
        violations.append(FieldViolation(field, "must be a JSON object"))
        return None
    return value


def _object(request: Any, name: str, violations: list[FieldViolation], default: str = "") -> Any:
    """The JSON object a request carries as ``<name>_json`` text or as the ``<name>`` Struct (one, not both)."""
    text = getattr(request, f"{name}_json")
    if not request.HasField(name):
        return _json_object(text or default, f"{name}_json", violations)
    if text:
        violations.append(FieldViolation(name, f"set {name}_json or {name}, not both"))
        return None
    struct = getattr(request, name)
    if struct.ByteSize() > MAX_JSON_BYTES:
        violations.append(FieldViolation(name, f"is larger than {MAX_JSON_BYTES} bytes"))
        return None
    return from_struct(struct)


def _json_value(text: str, field: str, violations: list[FieldViolation]) -> Any:
    if not text:
        violations.append(FieldViolation(field, "is required (JSON text)"))
        return None
    try:
        return parse_json(text, field)
    except VariableError as error:
        violations.append(FieldViolation(field, str(error)))
        return None


def _client_id(value: str, field: str, violations: list[FieldViolation]) -> str:
    if value and not CLIENT_ID_RE.match(value):
        violations.append(FieldViolation(field, "1-128 of letters, digits and _.:-"))
    return value


def instance_message(instance: Instance, engine: Engine, with_receipt: bool = True) -> pb.Instance:
    """The protobuf view of an instance."""
    end = instance.end or {}
    receipt = ""
    if with_receipt and instance.state == "concluded" and instance.mechanism.concluded:
        receipt = instance.mechanism.receipt().model_dump_json()
    outcome = end.get("outcome")
    meta = instance.meta
    return pb.Instance(
        id=instance.id, tenant=instance.tenant, kind=instance.kind, family=instance.family,
        config_json=json.dumps(meta["config"]), config=to_struct(meta["config"]), state=instance.state,
        outcome_json=json.dumps(outcome) if outcome is not None else "", receipt_json=receipt,
        receipt_hash=str(end.get("receipt_hash", "")), event_count=instance.seq, created_at_ms=meta["created_at"],
        escrow=instance.escrow, seller=meta.get("seller", ""), bind_variable=meta.get("bind_variable", ""),
        bind_field=meta.get("bind_field", ""), status_json=json.dumps(instance.status(engine.clock())),
        next_tick_ms=instance.mechanism_tick or 0)


def mechanism_kind_message(cls: type[Mechanism[Any, Any]]) -> pb.MechanismKind:
    """The protobuf description of a mechanism kind (what ListMechanisms lists)."""
    return pb.MechanismKind(kind=cls.kind, family=cls.family, deadline_fields=list(cls.deadline_fields),
                            closes_field=cls.closes_field or "", opens_field=cls.opens_field or "",
                            summary=cls.summary())


def event_response(ack: Ack, duplicate: bool) -> pb.SubmitEventResponse:
    """What a submit answers: the accepted event's seq, the actions (as JSON and as a ListValue), the state."""
    return pb.SubmitEventResponse(seq=ack.seq, duplicate=duplicate, actions_json=ack.actions_json(),
                                  actions=to_list(ack.actions), state=ack.state, now_ms=ack.now)


def variable_message(record: VariableRecord) -> pb.Variable:
    """The protobuf view of a variable version."""
    return pb.Variable(tenant=record.tenant, name=record.name, schema_json=json.dumps(record.schema),
                       value_json=json.dumps(record.value), version=record.version,
                       updated_at_ms=record.updated_at_ms, set_by=record.set_by, history_limit=record.history_limit)


def balance_message(tenant: str, agent: str, account: Account) -> pb.Balance:
    """The protobuf view of an account."""
    return pb.Balance(tenant=tenant, agent=agent, available=account.available, held=account.held)


def leader_call(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Run a unary method with the engine, or raise WRONG_NODE naming the leader (the interceptor answers)."""

    @functools.wraps(method)
    async def wrapper(self: CoordinatorServicer, request: Any, context: grpc.aio.ServicerContext) -> T:
        engine = self.node.leading
        if engine is None:
            raise await self.node.redirect()
        return await method(self, engine, request)

    return wrapper


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServiceServicer):
    """The gRPC face of one coordinator node (active or standby)."""

    def __init__(self, node: CoordinatorNode) -> None:
        self.node = node

    @property
    def cluster(self) -> str:
        """The cluster name."""
        return self.node.config.cluster

    async def GetCoordinatorLeader(self, request: pb.GetCoordinatorLeaderRequest,
                                   context: grpc.aio.ServicerContext) -> pb.GetCoordinatorLeaderResponse:
        """Who leads (from etcd), and whether this node does."""
        node, address, term = await self.node.leader()
        return pb.GetCoordinatorLeaderResponse(leader_node_id=node, leader_address=address, term=term,
                                               node_id=self.node.config.node_id,
                                               is_leader=self.node.leading is not None)

    async def ListMechanisms(self, request: pb.ListMechanismsRequest,
                             context: grpc.aio.ServicerContext) -> pb.ListMechanismsResponse:
        """The kinds this node runs, from its mechanism registry (no leader needed)."""
        return pb.ListMechanismsResponse(kinds=[mechanism_kind_message(cls) for cls in mechanism_classes()])

    # -- instances -----------------------------------------------------------------

    async def _create(self, engine: Engine, request: pb.CreateInstanceRequest, family: str) -> pb.Instance:
        violations: list[FieldViolation] = []
        tenant = _tenant(request.tenant, violations)
        kinds = registered_kinds()
        if request.kind not in kinds:
            violations.append(FieldViolation("kind", f"unknown kind {request.kind!r}; one of {kinds}"))
        config = _object(request, "config", violations, default="{}")
        _id(request.instance_id, "instance_id", violations, required=False)
        _id(request.seller, "seller", violations, required=False)
        _id(request.bind_variable, "bind_variable", violations, required=False)
        if request.bind_field and not request.bind_variable:
            violations.append(FieldViolation("bind_field", "needs bind_variable"))
        if len(request.bind_field) > 256:
            violations.append(FieldViolation("bind_field", "at most 256 characters"))
        raise_if(violations)
        instance = await engine.create(family, tenant, request.kind, config, request.instance_id, request.escrow,
                                       request.seller, request.bind_variable, request.bind_field)
        return instance_message(instance, engine)

    async def _get(self, engine: Engine, request: pb.GetInstanceRequest, family: str | None) -> pb.Instance:
        violations: list[FieldViolation] = []
        _id(request.id, "id", violations)
        raise_if(violations)
        return instance_message(engine.instance(_visible_id(engine, request.id), family), engine)

    async def _submit(self, engine: Engine, request: pb.SubmitEventRequest, family: str) -> pb.SubmitEventResponse:
        violations: list[FieldViolation] = []
        _id(request.id, "id", violations)
        _client_id(request.client_event_id, "client_event_id", violations)
        event = _object(request, "event", violations)
        raise_if(violations)
        cid = request.client_event_id or f"auto-{engine.clock()}-{id(request)}"
        ack, duplicate = await engine.submit(_visible_id(engine, request.id), family, cid, event)
        return event_response(ack, duplicate)

    @leader_call
    async def CreateAuction(self, engine: Engine, request: pb.CreateInstanceRequest) -> pb.Instance:
        """Create an auction."""
        return await self._create(engine, request, "auction")

    @leader_call
    async def GetAuction(self, engine: Engine, request: pb.GetInstanceRequest) -> pb.Instance:
        """An auction's state, outcome and receipt."""
        return await self._get(engine, request, "auction")

    @leader_call
    async def ListAuctions(self, engine: Engine, request: pb.ListInstancesRequest) -> pb.ListInstancesResponse:
        """Instances of a tenant (every family), optionally by state."""
        violations: list[FieldViolation] = []
        tenant = _tenant(request.tenant, violations)
        if request.state and request.state not in ("open", "concluded", "cancelled"):
            violations.append(FieldViolation("state", "one of open, concluded, cancelled"))
        raise_if(violations)
        chosen = [i for i in engine.instances.values()
                  if i.tenant == tenant and (not request.state or i.state == request.state)]
        chosen.sort(key=lambda i: (i.meta["created_at"], i.id))
        return pb.ListInstancesResponse(instances=[instance_message(i, engine, False) for i in chosen])

    @leader_call
    async def CancelAuction(self, engine: Engine, request: pb.CancelInstanceRequest) -> pb.Instance:
        """Cancel any open instance; escrow is released."""
        violations: list[FieldViolation] = []
        _id(request.id, "id", violations)
        if len(request.reason) > 1024:
            violations.append(FieldViolation("reason", "at most 1024 characters"))
        raise_if(violations)
        return instance_message(await engine.cancel(_visible_id(engine, request.id), request.reason), engine)

    @leader_call
    async def CloseInstance(self, engine: Engine, request: pb.CloseInstanceRequest) -> pb.Instance:
        """Close an instance now (explicit Close event)."""
        violations: list[FieldViolation] = []
        _id(request.id, "id", violations)
        raise_if(violations)
        return instance_message(await engine.close(_visible_id(engine, request.id)), engine)

    @leader_call
    async def SubmitBid(self, engine: Engine, request: pb.SubmitEventRequest) -> pb.SubmitEventResponse:
        """A bid (or accept) on an auction, durable before it is acknowledged."""
        return await self._submit(engine, request, "auction")

    async def SubmitBids(self, request_iterator: Any, context: grpc.aio.ServicerContext):
        """A bidi stream of bids, each acknowledged once durable (see :class:`BidStream`)."""
        engine = self.node.leading
        if engine is None:
            raise await self.node.redirect()
        stream = BidStream(self.node, engine)
        gauge = self.node.metrics.streams["bids"]
        gauge.inc()
        try:
            async for response in stream.run(request_iterator):
                yield response
        finally:
            gauge.dec()

    @leader_call
    async def CreateNegotiation(self, engine: Engine, request: pb.CreateInstanceRequest) -> pb.Instance:
        """Create a contract-net or bargaining session."""
        return await self._create(engine, request, "negotiation")

    @leader_call
    async def GetNegotiation(self, engine: Engine, request: pb.GetInstanceRequest) -> pb.Instance:
        """A negotiation's state."""
        return await self._get(engine, request, "negotiation")

    @leader_call
    async def Negotiate(self, engine: Engine, request: pb.SubmitEventRequest) -> pb.SubmitEventResponse:
        """One negotiation event."""
        return await self._submit(engine, request, "negotiation")

    @leader_call
    async def CreateVote(self, engine: Engine, request: pb.CreateInstanceRequest) -> pb.Instance:
        """Create a vote."""
        return await self._create(engine, request, "vote")

    @leader_call
    async def GetVote(self, engine: Engine, request: pb.GetInstanceRequest) -> pb.Instance:
        """A vote's state and decision."""
        return await self._get(engine, request, "vote")

    @leader_call
    async def CastVote(self, engine: Engine, request: pb.SubmitEventRequest) -> pb.SubmitEventResponse:
        """One ballot."""
        return await self._submit(engine, request, "vote")

    @leader_call
    async def CreateMarket(self, engine: Engine, request: pb.CreateInstanceRequest) -> pb.Instance:
        """Create a market."""
        return await self._create(engine, request, "market")

    @leader_call
    async def GetMarket(self, engine: Engine, request: pb.GetInstanceRequest) -> pb.Instance:
        """A market's state."""
        return await self._get(engine, request, "market")

    @leader_call
    async def PlaceOrder(self, engine: Engine, request: pb.SubmitEventRequest) -> pb.SubmitEventResponse:
        """A limit/market order or a clear."""
        return await self._submit(engine, request, "market")

    @leader_call
    async def CancelOrder(self, engine: Engine, request: pb.CancelOrderRequest) -> pb.SubmitEventResponse:
        """Cancel a resting order (its escrow returns)."""
        violations: list[FieldViolation] = []
        _id(request.id, "id", violations)
        _client_id(request.client_event_id, "client_event_id", violations)
        _id(request.order_id, "order_id", violations)
        _id(request.trader, "trader", violations)
        raise_if(violations)
        submit = pb.SubmitEventRequest(id=request.id, client_event_id=request.client_event_id, event_json=json.dumps(
            {"type": "cancel", "order_id": request.order_id, "trader": request.trader}))
        return await self._submit(engine, submit, "market")

    @leader_call
    async def GetBook(self, engine: Engine, request: pb.GetInstanceRequest) -> pb.BookSnapshot:
        """Resting orders per price level."""
        violations: list[FieldViolation] = []
        _id(request.id, "id", violations)
        raise_if(violations)
        bids, asks = engine.book(_visible_id(engine, request.id))
        return pb.BookSnapshot(id=request.id, event_count=engine.instance(request.id).seq,
                               bids=[pb.BookLevel(price=p, quantity=q, orders=n) for p, q, n in bids],
                               asks=[pb.BookLevel(price=p, quantity=q, orders=n) for p, q, n in asks])

    # -- variables -------------------------------------------------------------------

    @leader_call
    async def CreateVariable(self, engine: Engine, request: pb.CreateVariableRequest) -> pb.Variable:
        """Create a typed variable at version 1."""
        violations: list[FieldViolation] = []
        tenant = _tenant(request.tenant, violations)
        _id(request.name, "name", violations)
        schema = _json_object(request.schema_json or "{}", "schema_json", violations, MAX_SCHEMA_BYTES)
        value = _json_value(request.initial_json, "initial_json", violations)
        raise_if(violations)
        record = await engine.create_variable(tenant, request.name, schema, value,
                                              request.history_limit or DEFAULT_HISTORY)
        return variable_message(record)

    @leader_call
    async def GetVariable(self, engine: Engine, request: pb.GetVariableRequest) -> pb.Variable:
        """The current version."""
        violations: list[FieldViolation] = []
        tenant = _tenant(request.tenant, violations)
        _id(request.name, "name", violations)
        raise_if(violations)
        return variable_message(engine.variable(tenant, request.name))

    @leader_call
    async def ListVariables(self, engine: Engine, request: pb.ListVariablesRequest) -> pb.ListVariablesResponse:
        """A tenant's variables."""
        violations: list[FieldViolation] = []
        tenant = _tenant(request.tenant, violations)
        raise_if(violations)
        chosen = sorted((r for (t, _), r in engine.variables.items() if t == tenant), key=lambda r: r.name)
        return pb.ListVariablesResponse(variables=[variable_message(r) for r in chosen])

    @leader_call
    async def SetVariable(self, engine: Engine, request: pb.SetVariableRequest) -> pb.Variable:
        """Compare-and-set on version."""
        violations: list[FieldViolation] = []
        tenant = _tenant(request.tenant, violations)
        _id(request.name, "name", violations)
        value = _json_value(request.value_json, "value_json", violations)
        if request.expected_version < 1:
            violations.append(FieldViolation("expected_version", "must be the version you last read (>= 1)"))
        raise_if(violations)
        return variable_message(await engine.set_variable(tenant, request.name, request.expected_version, value))

    @leader_call
    async def VariableHistory(self, engine: Engine,
                              request: pb.VariableHistoryRequest) -> pb.VariableHistoryResponse:
        """The kept versions, oldest first."""
        violations: list[FieldViolation] = []
        tenant = _tenant(request.tenant, violations)
        _id(request.name, "name", violations)
        raise_if(violations)
        engine.variable(tenant, request.name)
        kept = engine.history.get((tenant, request.name), [])
        return pb.VariableHistoryResponse(versions=[variable_message(r) for r in kept])

    # -- ledger -------------------------------------------------------------------------

    @staticmethod
    def _amount(value: int, violations: list[FieldViolation]) -> None:
        if not 0 < value <= MAX_AMOUNT:
            violations.append(FieldViolation("amount", f"must be 1..{MAX_AMOUNT}"))

    @leader_call
    async def Deposit(self, engine: Engine, request: pb.DepositRequest) -> pb.Balance:
        """Credit an account."""
        violations: list[FieldViolation] = []
        tenant = _tenant(request.tenant, violations)
        _id(request.agent, "agent", violations)
        self._amount(request.amount, violations)
        _client_id(request.client_op_id, "client_op_id", violations)
        raise_if(violations)
        account, _ = await engine.deposit(tenant, request.agent, request.amount, request.client_op_id)
        return balance_message(tenant, request.agent, account)

    @leader_call
    async def Transfer(self, engine: Engine, request: pb.TransferRequest) -> pb.TransferResponse:
        """Move available credit between two agents of a tenant."""
        violations: list[FieldViolation] = []
        tenant = _tenant(request.tenant, violations)
        _id(request.from_agent, "from_agent", violations)
        _id(request.to_agent, "to_agent", violations)
        self._amount(request.amount, violations)
        _client_id(request.client_op_id, "client_op_id", violations)
        raise_if(violations)
        src, dst, duplicate = await engine.transfer(tenant, request.from_agent, request.to_agent, request.amount,
                                                    request.client_op_id)
        return pb.TransferResponse(from_balance=balance_message(tenant, request.from_agent, src),
                                   to_balance=balance_message(tenant, request.to_agent, dst), duplicate=duplicate)

    @leader_call
    async def GetBalance(self, engine: Engine, request: pb.GetBalanceRequest) -> pb.Balance:
        """An account's available and held credit (zero for an unknown agent)."""
        violations: list[FieldViolation] = []
        tenant = _tenant(request.tenant, violations)
        _id(request.agent, "agent", violations)
        raise_if(violations)
        return balance_message(tenant, request.agent, engine.ledger.balance(tenant, request.agent))

    @leader_call
    async def ListBalances(self, engine: Engine, request: pb.ListBalancesRequest) -> pb.ListBalancesResponse:
        """Every account of a tenant."""
        violations: list[FieldViolation] = []
        tenant = _tenant(request.tenant, violations)
        raise_if(violations)
        chosen = sorted((a, acct) for (t, a), acct in engine.ledger.accounts.items() if t == tenant)
        return pb.ListBalancesResponse(balances=[balance_message(tenant, a, acct) for a, acct in chosen])

    # -- streams (any node, from etcd) ------------------------------------------------

    async def WatchAuction(self, request: pb.WatchInstanceRequest, context: grpc.aio.ServicerContext):
        """Accepted events of an instance from ``from_seq``, then live, ending with its final state."""
        from coordinator.watch import watch_instance

        async for item in self._counted_stream(watch_instance(self.node.client, self.cluster, request),
                                             "watch_instance"):
            yield item

    async def WatchTrades(self, request: pb.WatchInstanceRequest, context: grpc.aio.ServicerContext):
        """A market's trades, re-derived by replaying its durable events."""
        from coordinator.watch import watch_trades

        async for item in self._counted_stream(watch_trades(self.node.client, self.cluster, request),
                                             "watch_trades"):
            yield item

    async def WatchVariable(self, request: pb.WatchVariableRequest, context: grpc.aio.ServicerContext):
        """Every version of a variable in order."""
        from coordinator.watch import watch_variable

        async for item in self._counted_stream(watch_variable(self.node.client, self.cluster, request),
                                             "watch_variable"):
            yield item

    async def _counted_stream(self, source: Any, kind: str):
        """A watch stream counted in the open-streams gauge while it runs (errors pass to the interceptor)."""
        gauge = self.node.metrics.streams[kind]
        gauge.inc()
        try:
            async for item in source:
                yield item
        finally:
            gauge.dec()


def _bid_error(bid: pb.SubmitEventRequest, error: ServiceError) -> pb.BidAck:
    return pb.BidAck(id=bid.id, client_event_id=bid.client_event_id,
                     error=pb.BidError(code=error.code.value[0], message=error.message, reason=error.reason))


class BidStream:
    """One SubmitBids call on the leader: stage each bid at once, ack it when its transaction committed.

    Bench: ``python -m bench coordinator --quick`` (stream_bids_per_s_* against unary_bids_per_s_*)
    justified the stream: a message on an open stream costs far less Python gRPC work than a unary call.
    A reader task validates and stages every incoming bid (the engine applies it in memory and queues
    its write group with the committer); the generator sends acks. No task is created or woken per bid:
    the durability future of a staged bid gets a done-callback that appends its ack to ``ready`` and
    sets one event per stream, so one group commit wakes each stream once and its acks leave in one
    message. A refused bid is answered at once with a BidError and the stream goes on. A failed commit
    (not durable, or fenced) ends the stream with UNAVAILABLE / NOT_DURABLE, and a node that stops
    leading ends it with WRONG_NODE: the client resends what was not acknowledged to the leader.
    """

    def __init__(self, node: CoordinatorNode, engine: Engine) -> None:
        self.node = node
        self.engine = engine
        self.ready: list[pb.BidAck] = []
        self.inflight = 0
        self.failure: ServiceError | None = None
        self.reading = True
        self.wake = asyncio.Event()

    def _stage(self, bid: pb.SubmitEventRequest) -> None:
        violations: list[FieldViolation] = []
        _id(bid.id, "id", violations)
        if not bid.client_event_id:
            violations.append(FieldViolation("client_event_id", "is required on a stream (acks are matched by it)"))
        _client_id(bid.client_event_id, "client_event_id", violations)
        event = _object(bid, "event", violations)
        try:
            raise_if(violations)
            ack, duplicate, done = self.engine.stage_submit(_visible_id(self.engine, bid.id), "auction",
                                                            bid.client_event_id, event)
        except ServiceError as error:
            self.ready.append(_bid_error(bid, error))
            return
        if done is None or done.done():
            self._durable(bid, ack, duplicate, done)
        else:
            self.inflight += 1
            done.add_done_callback(functools.partial(self._committed, bid, ack, duplicate))

    def _committed(self, bid: pb.SubmitEventRequest, ack: Ack, duplicate: bool, done: asyncio.Future[int]) -> None:
        self.inflight -= 1
        self._durable(bid, ack, duplicate, done)
        self.wake.set()

    def _durable(self, bid: pb.SubmitEventRequest, ack: Ack, duplicate: bool,
                 done: asyncio.Future[int] | None) -> None:
        if done is not None and (done.cancelled() or done.exception() is not None):
            if self.failure is None:
                error = done.exception() if not done.cancelled() else None
                self.failure = not_durable(error if isinstance(error, CommitFailed) else CommitFailed("cancelled"))
            return
        self.ready.append(pb.BidAck(id=bid.id, client_event_id=bid.client_event_id,
                                    result=event_response(ack, duplicate)))

    async def _read(self, request_iterator: Any) -> None:
        try:
            async for request in request_iterator:
                if self.node.leading is not self.engine:
                    self.failure = self.failure or await self.node.redirect()
                    return
                for bid in request.bids:
                    self._stage(bid)
                self.wake.set()
        finally:
            self.reading = False
            self.wake.set()

    async def run(self, request_iterator: Any) -> AsyncIterator[pb.SubmitBidsResponse]:
        """Acks in completion order until the client half-closes and every bid is answered."""
        reader = asyncio.create_task(self._read(request_iterator))
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                if self.ready:
                    acks, self.ready = self.ready, []
                    yield pb.SubmitBidsResponse(acks=acks)
                if self.failure is not None:
                    raise self.failure
                if reader.done() and reader.exception() is not None:
                    raise reader.exception()  # type: ignore[misc]
                if not self.reading and not self.inflight and not self.ready:
                    return
        finally:
            reader.cancel()
