"""The SDK's typed results: built from the contract's messages, JSON fields parsed, enums by name, no protobuf left."""

from __future__ import annotations

import dataclasses
import json

import pytest
from google.protobuf.message import Message

from mabeam.v1 import agent_pb2, common_pb2, coordinator_pb2, dataplane_pb2, mesh_pb2
from mabeam_client import types
from mabeam_client.output import to_dict


def _no_protobuf(value: object) -> None:
    """Nothing reachable from a result is a protobuf message."""
    assert not isinstance(value, Message), value
    if dataclasses.is_dataclass(value):
        for item in dataclasses.fields(value):
            _no_protobuf(getattr(value, item.name))
    elif isinstance(value, dict | list | tuple):
        for item in (value.values() if isinstance(value, dict) else value):
            _no_protobuf(item)


def test_an_instance_arrives_with_its_json_parsed() -> None:
    message = coordinator_pb2.Instance(
        id="a1", kind="sealed", family="auction", config_json='{"pricing": "second", "closes_at": 17}',
        state="concluded", outcome_json='{"winner": "bob", "price": 45}', receipt_json='{"events": []}',
        status_json='{"bids": 3}', event_count=4)
    instance = types.Instance.from_proto(message)
    assert instance.config == {"pricing": "second", "closes_at": 17}
    assert (instance.outcome, instance.receipt, instance.status) == ({"winner": "bob", "price": 45},
                                                                     {"events": []}, {"bids": 3})
    open_one = types.Instance.from_proto(coordinator_pb2.Instance(id="a2", state="open"))
    assert (open_one.config, open_one.outcome, open_one.receipt, open_one.status) == ({}, None, None, {})
    _no_protobuf(instance)
    assert json.loads(json.dumps(to_dict(instance)))["outcome"]["winner"] == "bob"


def test_events_actions_variables_and_balances() -> None:
    result = types.EventResult.from_proto(coordinator_pb2.SubmitEventResponse(
        seq=3, actions_json='[{"type": "hold", "amount": 5}]', state="open", now_ms=9))
    assert result.actions == [{"type": "hold", "amount": 5}] and result.seq == 3
    watched = types.InstanceEvent.from_proto(coordinator_pb2.InstanceEvent(seq=1, event_json='{"type": "bid"}'))
    assert watched.event == {"type": "bid"} and watched.outcome is None
    variable = types.Variable.from_proto(coordinator_pb2.Variable(name="v", schema_json='{"type": "integer"}',
                                                                  value_json="20", version=2))
    assert (variable.schema, variable.value, variable.version) == ({"type": "integer"}, 20, 2)
    moved = types.TransferResult.from_proto(coordinator_pb2.TransferResponse(
        from_balance=coordinator_pb2.Balance(agent="a", available=1), to_balance=coordinator_pb2.Balance(agent="b")))
    assert (moved.from_balance.available, moved.to_balance.agent) == (1, "b")
    for value in (result, watched, variable, moved):
        _no_protobuf(value)


def test_mesh_and_agent_results() -> None:
    node = common_pb2.NodeInfo(node_id="n1", data_addresses={"high": "tcp://x"}, labels={"zone": "a"})
    event = types.MemberEvent.from_proto(mesh_pb2.MemberEvent(type=mesh_pb2.MemberEvent.JOINED, node=node, revision=4))
    assert event.type == "JOINED" and event.node is not None and event.node.data_addresses == {"high": "tcp://x"}
    assert types.MemberEvent.from_proto(mesh_pb2.MemberEvent(type=mesh_pb2.MemberEvent.SNAPSHOT_DONE)).node is None
    entry = types.NameEntry.from_proto(mesh_pb2.NameEntry(
        name="planner", target=common_pb2.AgentRef(node_id="n1", agent_id="a7"), metadata={"k": "v"}))
    assert entry.target == types.AgentRef("default", "n1", "a7")
    tree = types.TreeNode.from_proto(agent_pb2.TreeNode(agent_id="sup", children=[agent_pb2.TreeNode(agent_id="c")]))
    assert tree.children[0].agent_id == "c"
    delivery = types.Delivery.from_proto(dataplane_pb2.SubscribeResponse(
        envelope=dataplane_pb2.Envelope(id=5, kind=dataplane_pb2.MESSAGE_KIND_CALL, channel=dataplane_pb2.CHANNEL_HIGH,
                                        sender=common_pb2.AgentRef(node_id="n2", agent_id="x")),
        payload=b"\xff\x00"))
    assert (delivery.kind, delivery.channel, delivery.payload) == ("call", "high", b"\xff\x00")
    assert to_dict(delivery)["payload"] == "base64:/wA="
    for value in (event, entry, tree, delivery):
        _no_protobuf(value)


def test_destinations_and_channels() -> None:
    assert types.destination_fields("svc") == {"to_name": "svc"}
    assert types.destination_fields(types.AgentRef("t", "n", "a"))["to_agent"].agent_id == "a"
    assert types.destination_fields(types.GroupAddress("g", "one"))["to_group"].mode == dataplane_pb2.GROUP_MODE_ONE
    assert types.channel_number("bulk") == dataplane_pb2.CHANNEL_BULK and types.channel_name(0) == "normal"
    with pytest.raises(ValueError, match="unknown channel"):
        types.channel_number("fast")
    with pytest.raises(ValueError, match="group mode"):
        types.destination_fields(types.GroupAddress("g", "some"))
