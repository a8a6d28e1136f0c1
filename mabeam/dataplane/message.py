"""What users of the data plane hold: destinations, agent references and delivered messages.

These are the wire-level value types shared by meshd and by every process that
attaches to it (agentd, benches, SDKs). :class:`AgentRef` says where an endpoint
lives; a :data:`Destination` is a registered name, an :class:`AgentRef` or a
:class:`Group`; a :class:`Message` is an envelope header plus its payload.
"""

from __future__ import annotations

from dataclasses import dataclass

from mabeam.dataplane import envelope as wire
from mabeam.dataplane.errors import DataPlaneError, error_from_code
from mabeam.v1 import common_pb2
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
        return error_from_code(self.envelope.error_code, self.envelope.error_message)

    def __repr__(self) -> str:
        return f"Message(id={self.id}, kind={self.kind}, sender={self.sender}, {len(self.payload)} B)"
