"""What users of the data plane hold: destinations, agent references and delivered messages.

These are the wire-level value types shared by meshd and by every process that
attaches to it (agentd, benches, SDKs). :class:`AgentRef` says where an endpoint
lives; a :data:`Destination` is a registered name, an :class:`AgentRef` or a
:class:`Group`; a :class:`Message` is an envelope header plus its payload.
"""

from __future__ import annotations

from dataclasses import dataclass

from mabeam.dataplane import envelope as wire
from mabeam.dataplane.errors import DataPlaneError, InvalidArgument, error_from_envelope
from mabeam.v1 import common_pb2, external_agent_pb2
from mabeam.v1 import dataplane_pb2 as pb

DEFAULT_TENANT = "default"


def tenant_or_default(tenant: str | None) -> str:
    """The tenant, with empty meaning "default"."""
    return tenant or DEFAULT_TENANT


@dataclass(frozen=True, slots=True)
class AgentRef:
    """Where an endpoint lives: (tenant, node, agent id); hashable, used as a routing key."""

    tenant: str
    node_id: str
    agent_id: str

    @classmethod
    def from_proto(cls, ref: common_pb2.AgentRef) -> AgentRef:
        """From the protobuf AgentRef (empty tenant means "default")."""
        return cls(tenant_or_default(ref.tenant), ref.node_id, ref.agent_id)

    def to_proto(self) -> common_pb2.AgentRef:
        """As the protobuf AgentRef."""
        return common_pb2.AgentRef(tenant=self.tenant, node_id=self.node_id, agent_id=self.agent_id)


@dataclass(frozen=True, slots=True)
class Group:
    """A group destination; ``mode`` is "all" (every member) or "one" (round-robin)."""

    name: str
    mode: str = "all"

    def to_proto(self) -> pb.GroupAddress:
        """As the protobuf GroupAddress."""
        return pb.GroupAddress(group=self.name, mode=pb.GROUP_MODE_ONE if self.mode == "one" else pb.GROUP_MODE_ALL)


#: A destination: a registered name, an endpoint, or a group.
Destination = str | AgentRef | Group

#: The messages that name a destination in a ``to`` oneof (``to_name``, ``to_agent``, ``to_group``).
Addressed = pb.Envelope | pb.SendRequest | pb.CallRequest | external_agent_pb2.AgentOutbound


def destination_of(message: Addressed, tenant: str, missing: type[DataPlaneError] = InvalidArgument,
                   what: str = "the request") -> Destination:
    """The destination ``message``'s ``to`` oneof names; ``missing`` (saying ``what`` lacks it) when none.

    An agent reference without a tenant is in ``tenant`` (the sender's). The one decoder of the oneof, for
    attached processes' envelopes, gRPC Send/Call and external agents' outbound messages alike.
    """
    which = message.WhichOneof("to")
    if which == "to_name":
        return message.to_name
    if which == "to_agent":
        ref = message.to_agent
        return AgentRef(tenant_or_default(ref.tenant or tenant), ref.node_id, ref.agent_id)
    if which == "to_group":
        return Group(message.to_group.group, "one" if message.to_group.mode == pb.GROUP_MODE_ONE else "all")
    raise missing(f"{what} names no destination (to_name, to_agent or to_group)")


class Message:
    """A delivered message: the envelope header and the payload bytes."""

    __slots__ = ("envelope", "payload")

    def __init__(self, envelope: pb.Envelope, payload: bytes) -> None:
        self.envelope = envelope
        self.payload = payload

    @property
    def id(self) -> int:
        """The message id."""
        return self.envelope.id

    @property
    def kind(self) -> int:
        """MessageKind value (CAST, CALL, REPLY, ERROR)."""
        return self.envelope.kind

    @property
    def is_call(self) -> bool:
        """True when the sender waits for a reply."""
        return self.envelope.kind == wire.CALL

    @property
    def channel(self) -> int:
        """Channel value the message travelled on."""
        return self.envelope.channel

    @property
    def sender(self) -> AgentRef:
        """Who sent it."""
        return AgentRef.from_proto(self.envelope.sender)

    @property
    def error(self) -> DataPlaneError | None:
        """For ERROR messages (a bounced cast): the typed error; else None."""
        if self.envelope.kind != wire.ERROR:
            return None
        return error_from_envelope(self.envelope)

    def __repr__(self) -> str:
        return f"Message(id={self.id}, kind={self.kind}, sender={self.sender}, {len(self.payload)} B)"
