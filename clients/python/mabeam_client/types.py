"""What the SDK's clients return: plain, typed, immutable values — never raw protobuf.

Each class mirrors one message of the contract (``proto/mabeam/v1``) with the
same field names, except that JSON carried as text (``config_json``,
``outcome_json``, ``event_json``, ...) arrives parsed, under the name without
``_json`` (``config``, ``outcome``, ``event``), and enums arrive as their short
names (``"JOINED"``, ``"normal"``). ``from_proto`` builds one from the message;
``dataclasses.asdict`` turns one into JSON-able data (bytes aside).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mabeam.v1 import agent_pb2, common_pb2, coordinator_pb2, dataplane_pb2, mesh_pb2


def parse_json(text: str, default: Any = None) -> Any:
    """JSON text from a ``*_json`` field, parsed (``default`` when the field is empty)."""
    return json.loads(text) if text else default


# -- mesh -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentRef:
    """Where an agent (or any attached endpoint) lives."""

    tenant: str
    node_id: str
    agent_id: str

    @classmethod
    def from_proto(cls, ref: common_pb2.AgentRef) -> AgentRef:
        """From a ``mabeam.v1.AgentRef``."""
        return cls(ref.tenant or "default", ref.node_id, ref.agent_id)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A mesh node (one meshd per host) as published in etcd."""

    node_id: str
    grpc_address: str
    data_addresses: dict[str, str]
    version: str
    start_time_unix_ms: int
    labels: dict[str, str]
    lease_id: int
    curve_public_key: str
    metrics_address: str

    @classmethod
    def from_proto(cls, node: common_pb2.NodeInfo) -> NodeInfo:
        """From a ``mabeam.v1.NodeInfo``."""
        return cls(node.node_id, node.grpc_address, dict(node.data_addresses), node.version,
                   node.start_time_unix_ms, dict(node.labels), node.lease_id, node.curve_public_key,
                   node.metrics_address)


@dataclass(frozen=True, slots=True)
class Ping:
    """A meshd's identity, whether it reaches etcd, and its clock."""

    node: NodeInfo
    etcd_connected: bool
    server_time_unix_ms: int

    @classmethod
    def from_proto(cls, response: mesh_pb2.PingResponse) -> Ping:
        """From a ``PingResponse``."""
        return cls(NodeInfo.from_proto(response.node), response.etcd_connected, response.server_time_unix_ms)


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """A membership change: ``type`` is SNAPSHOT, SNAPSHOT_DONE, JOINED, UPDATED or LEFT."""

    type: str
    node: NodeInfo | None
    revision: int

    @classmethod
    def from_proto(cls, event: mesh_pb2.MemberEvent) -> MemberEvent:
        """From a ``MemberEvent``."""
        node = NodeInfo.from_proto(event.node) if event.HasField("node") else None
        return cls(mesh_pb2.MemberEvent.Type.Name(event.type), node, event.revision)


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    """The leader of a role; ``node_id`` is empty when there is none."""

    role: str
    node_id: str
    address: str
    term: int

    @classmethod
    def from_proto(cls, leader: mesh_pb2.LeaderInfo) -> LeaderInfo:
        """From a ``LeaderInfo``."""
        return cls(leader.role, leader.node_id, leader.address, leader.term)


@dataclass(frozen=True, slots=True)
class NameEntry:
    """A registered name and the agent it points to."""

    tenant: str
    name: str
    target: AgentRef
    metadata: dict[str, str]
    revision: int

    @classmethod
    def from_proto(cls, entry: mesh_pb2.NameEntry) -> NameEntry:
        """From a ``NameEntry``."""
        return cls(entry.tenant, entry.name, AgentRef.from_proto(entry.target), dict(entry.metadata), entry.revision)


@dataclass(frozen=True, slots=True)
class GroupMember:
    """One member of a process group."""

    tenant: str
    group: str
    member: AgentRef
    metadata: dict[str, str]

    @classmethod
    def from_proto(cls, member: mesh_pb2.GroupMember) -> GroupMember:
        """From a ``GroupMember``."""
        return cls(member.tenant, member.group, AgentRef.from_proto(member.member), dict(member.metadata))


@dataclass(frozen=True, slots=True)
class GroupSummary:
    """A group of a tenant and how many members it has."""

    tenant: str
    group: str
    member_count: int

    @classmethod
    def from_proto(cls, summary: mesh_pb2.GroupSummary) -> GroupSummary:
        """From a ``GroupSummary``."""
        return cls(summary.tenant, summary.group, summary.member_count)


# -- data plane -----------------------------------------------------------------------------


def channel_name(channel: int) -> str:
    """``"normal"`` for ``CHANNEL_NORMAL`` (and for unspecified, which means normal)."""
    if not channel:
        return "normal"
    return dataplane_pb2.Channel.Name(channel).removeprefix("CHANNEL_").lower()  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class GroupAddress:
    """A group destination: every member (``mode="all"``) or one in round-robin turn (``"one"``)."""

    group: str
    mode: str = "all"


#: Where a data-plane message goes: a registered name, an agent, or a group.
Destination = str | AgentRef | GroupAddress


def channel_number(name: str) -> dataplane_pb2.Channel.ValueType:
    """The ``Channel`` value for ``"control"``, ``"high"``, ``"normal"`` or ``"bulk"``."""
    try:
        return dataplane_pb2.Channel.Value("CHANNEL_" + name.upper())
    except ValueError:
        raise ValueError(f"unknown channel {name!r}: one of control, high, normal, bulk") from None


def destination_fields(to: Destination) -> dict[str, Any]:
    """The ``to`` oneof of a SendRequest/CallRequest for a destination."""
    if isinstance(to, AgentRef):
        return {"to_agent": common_pb2.AgentRef(tenant=to.tenant, node_id=to.node_id, agent_id=to.agent_id)}
    if isinstance(to, GroupAddress):
        mode = {"all": dataplane_pb2.GROUP_MODE_ALL, "one": dataplane_pb2.GROUP_MODE_ONE}.get(to.mode)
        if mode is None:
            raise ValueError(f"unknown group mode {to.mode!r}: all or one")
        return {"to_group": dataplane_pb2.GroupAddress(group=to.group, mode=mode)}
    return {"to_name": to}


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to a data-plane call."""

    payload: bytes
    responder: AgentRef
    message_id: int

    @classmethod
    def from_proto(cls, response: dataplane_pb2.CallResponse) -> Reply:
        """From a ``CallResponse``."""
        return cls(bytes(response.payload), AgentRef.from_proto(response.responder), response.message_id)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """The first item of a subscription: the endpoint meshd opened for it."""

    ref: AgentRef


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message delivered to a subscription. ``kind`` is cast, call or reply; reply to a call with
    ``MeshClient.reply(delivery, payload)``."""

    id: int
    kind: str
    channel: str
    sender: AgentRef
    payload: bytes
    tenant: str
    correlation_id: int
    deadline_unix_ms: int
    traceparent: str

    @classmethod
    def from_proto(cls, response: dataplane_pb2.SubscribeResponse) -> Delivery:
        """From a ``SubscribeResponse`` that carries a message."""
        env = response.envelope
        kind = dataplane_pb2.MessageKind.Name(env.kind).removeprefix("MESSAGE_KIND_").lower()
        return cls(env.id, kind, channel_name(env.channel), AgentRef.from_proto(env.sender),
                   bytes(response.payload), env.tenant or "default", env.correlation_id, env.deadline_unix_ms,
                   env.traceparent)


# -- agents -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """One agent of an agentd: identity, state, supervision, mailbox and counters."""

    agent_id: str
    name: str
    type: str
    status: str
    supervisor: str
    restarts: int
    last_error: str
    mailbox_depth: int
    mailbox_capacity: int
    handled: int
    memory_bytes: int
    checkpoint_version: int
    is_supervisor: bool
    worker: str
    #: The tenant the agent belongs to.
    tenant: str = ""

    @classmethod
    def from_proto(cls, info: agent_pb2.AgentInfo) -> AgentInfo:
        """From an ``AgentInfo``."""
        return cls(info.agent_id, info.name, info.type, info.status, info.supervisor, info.restarts,
                   info.last_error, info.mailbox_depth, info.mailbox_capacity, info.handled, info.memory_bytes,
                   info.checkpoint_version, info.is_supervisor, info.worker, info.tenant)


@dataclass(frozen=True, slots=True)
class TreeNode:
    """A node of a supervision tree."""

    agent_id: str
    name: str
    type: str
    status: str
    restarts: int
    strategy: str
    worker: str
    children: tuple[TreeNode, ...] = ()
    #: The tenant the agent belongs to.
    tenant: str = ""

    @classmethod
    def from_proto(cls, node: agent_pb2.TreeNode) -> TreeNode:
        """From a ``TreeNode`` (recursively)."""
        return cls(node.agent_id, node.name, node.type, node.status, node.restarts, node.strategy, node.worker,
                   tuple(cls.from_proto(child) for child in node.children), node.tenant)


# -- coordinator ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CoordinatorLeader:
    """Who leads the coordinator role, and whether the answering node does."""

    leader_node_id: str
    leader_address: str
    term: int
    node_id: str
    is_leader: bool

    @classmethod
    def from_proto(cls, response: coordinator_pb2.GetCoordinatorLeaderResponse) -> CoordinatorLeader:
        """From a ``GetCoordinatorLeaderResponse``."""
        return cls(response.leader_node_id, response.leader_address, response.term, response.node_id,
                   response.is_leader)


@dataclass(frozen=True, slots=True)
class MechanismKind:
    """A mechanism kind the coordinator runs: its family, deadline fields and which field closes/opens it."""

    kind: str
    family: str
    deadline_fields: list[str]
    closes_field: str
    opens_field: str
    summary: str

    @classmethod
    def from_proto(cls, kind: coordinator_pb2.MechanismKind) -> MechanismKind:
        """From a ``MechanismKind``."""
        return cls(kind.kind, kind.family, list(kind.deadline_fields), kind.closes_field, kind.opens_field,
                   kind.summary)


@dataclass(frozen=True, slots=True)
class Instance:
    """A mechanism instance (auction, negotiation, vote, market): config, state, status, outcome, receipt."""

    id: str
    tenant: str
    kind: str
    family: str
    config: dict[str, Any]
    state: str
    outcome: Any
    receipt: dict[str, Any] | None
    receipt_hash: str
    event_count: int
    created_at_ms: int
    escrow: bool
    seller: str
    bind_variable: str
    bind_field: str
    status: dict[str, Any]
    next_tick_ms: int

    @classmethod
    def from_proto(cls, instance: coordinator_pb2.Instance) -> Instance:
        """From an ``Instance`` (its JSON fields parsed)."""
        return cls(instance.id, instance.tenant, instance.kind, instance.family, parse_json(instance.config_json, {}),
                   instance.state, parse_json(instance.outcome_json), parse_json(instance.receipt_json),
                   instance.receipt_hash, instance.event_count, instance.created_at_ms, instance.escrow,
                   instance.seller, instance.bind_variable, instance.bind_field,
                   parse_json(instance.status_json, {}), instance.next_tick_ms)


@dataclass(frozen=True, slots=True)
class EventResult:
    """An accepted (durable) event: its sequence number, the mechanism's actions and the instance's state."""

    seq: int
    duplicate: bool
    actions: list[Any]
    state: str
    now_ms: int

    @classmethod
    def from_proto(cls, response: coordinator_pb2.SubmitEventResponse) -> EventResult:
        """From a ``SubmitEventResponse``."""
        return cls(response.seq, response.duplicate, parse_json(response.actions_json, []), response.state,
                   response.now_ms)


@dataclass(frozen=True, slots=True)
class InstanceEvent:
    """One accepted event of a watched instance; the last one has ``final_state`` (and ``outcome``) set."""

    seq: int
    now_ms: int
    event: Any
    final_state: str
    outcome: Any

    @classmethod
    def from_proto(cls, event: coordinator_pb2.InstanceEvent) -> InstanceEvent:
        """From an ``InstanceEvent``."""
        return cls(event.seq, event.now_ms, parse_json(event.event_json), event.final_state,
                   parse_json(event.outcome_json))


@dataclass(frozen=True, slots=True)
class BookLevel:
    """Resting quantity at one price."""

    price: int
    quantity: int
    orders: int


@dataclass(frozen=True, slots=True)
class Book:
    """A market's resting orders per price level."""

    id: str
    bids: list[BookLevel]
    asks: list[BookLevel]
    event_count: int

    @classmethod
    def from_proto(cls, book: coordinator_pb2.BookSnapshot) -> Book:
        """From a ``BookSnapshot``."""
        def levels(items: Any) -> list[BookLevel]:
            return [BookLevel(level.price, level.quantity, level.orders) for level in items]

        return cls(book.id, levels(book.bids), levels(book.asks), book.event_count)


@dataclass(frozen=True, slots=True)
class Trade:
    """A market trade."""

    seq: int
    buy_order: str
    sell_order: str
    buyer: str
    seller: str
    price: int
    quantity: int
    at_ms: int

    @classmethod
    def from_proto(cls, trade: coordinator_pb2.TradeEvent) -> Trade:
        """From a ``TradeEvent``."""
        return cls(trade.seq, trade.buy_order, trade.sell_order, trade.buyer, trade.seller, trade.price,
                   trade.quantity, trade.at_ms)


@dataclass(frozen=True, slots=True)
class Variable:
    """One version of a typed variable: its JSON schema and value, parsed."""

    tenant: str
    name: str
    schema: dict[str, Any]
    value: Any
    version: int
    updated_at_ms: int
    set_by: str
    history_limit: int

    @classmethod
    def from_proto(cls, variable: coordinator_pb2.Variable) -> Variable:
        """From a ``Variable``."""
        return cls(variable.tenant, variable.name, parse_json(variable.schema_json, {}),
                   parse_json(variable.value_json), variable.version, variable.updated_at_ms, variable.set_by,
                   variable.history_limit)


@dataclass(frozen=True, slots=True)
class Balance:
    """An account's available and held credit."""

    tenant: str
    agent: str
    available: int
    held: int

    @classmethod
    def from_proto(cls, balance: coordinator_pb2.Balance) -> Balance:
        """From a ``Balance``."""
        return cls(balance.tenant, balance.agent, balance.available, balance.held)


@dataclass(frozen=True, slots=True)
class TransferResult:
    """Both balances after a transfer; ``duplicate`` when the client_op_id was seen before."""

    from_balance: Balance
    to_balance: Balance
    duplicate: bool = field(default=False)

    @classmethod
    def from_proto(cls, response: coordinator_pb2.TransferResponse) -> TransferResult:
        """From a ``TransferResponse``."""
        return cls(Balance.from_proto(response.from_balance), Balance.from_proto(response.to_balance),
                   response.duplicate)
