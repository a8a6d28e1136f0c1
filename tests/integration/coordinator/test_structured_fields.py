"""Configs, events and actions as google.protobuf Struct/ListValue beside their JSON text, on a real coordinator.

A request may carry either form (not both); every response fills both, and the
two always say the same thing.
"""

from __future__ import annotations

import json
import time

import grpc
import pytest

from mabeam.structs import from_list, from_struct, to_struct
from mabeam.v1 import coordinator_pb2 as pb
from mabeam.v1 import coordinator_pb2_grpc
from mabeam_client import errors as sdk
from mabeam_client.coordinator import CoordinatorClient


async def _leader_stub(endpoints: list[str]) -> tuple[grpc.aio.Channel, coordinator_pb2_grpc.CoordinatorServiceStub]:
    async with CoordinatorClient(endpoints) as coord:
        leader = (await coord.leader()).leader_address
    channel = grpc.aio.insecure_channel(leader)
    return channel, coordinator_pb2_grpc.CoordinatorServiceStub(channel)


async def test_struct_in_struct_out_and_json_in_json_out(coordinators) -> None:
    cluster = coordinators(1)
    channel, stub = await _leader_stub(cluster.coordinator_endpoints)
    try:
        closes = int(time.time() * 1000) + 60_000
        config = {"pricing": "second", "closes_at": closes, "reserve": 5}
        # Struct in: the instance answers with both forms, equal.
        made = await stub.CreateAuction(pb.CreateInstanceRequest(kind="sealed", instance_id="structs",
                                                                  config=to_struct(config)))
        assert from_struct(made.config) == json.loads(made.config_json)
        assert json.loads(made.config_json)["closes_at"] == closes  # integers stay integers
        # JSON in: the same, through the other door.
        twin = await stub.CreateAuction(pb.CreateInstanceRequest(kind="sealed", instance_id="json",
                                                                 config_json=json.dumps(config)))
        assert from_struct(twin.config) == json.loads(twin.config_json) == json.loads(made.config_json)
        # Events either way; actions come back as JSON and as a ListValue.
        by_struct = await stub.SubmitBid(pb.SubmitEventRequest(
            id="structs", client_event_id="s1", event=to_struct({"type": "bid", "bidder": "ann", "amount": 9})))
        by_json = await stub.SubmitBid(pb.SubmitEventRequest(
            id="structs", client_event_id="j1", event_json=json.dumps({"type": "bid", "bidder": "bob", "amount": 7})))
        for ack in (by_struct, by_json):
            assert from_list(ack.actions) == json.loads(ack.actions_json)
        # The bid stream takes Struct events too.
        stream = stub.SubmitBids()
        await stream.write(pb.SubmitBidsRequest(bids=[pb.SubmitEventRequest(
            id="structs", client_event_id="s2", event=to_struct({"type": "bid", "bidder": "cy", "amount": 8}))]))
        answer = await stream.read()
        await stream.done_writing()
        assert answer.acks[0].WhichOneof("outcome") == "result"
        assert from_list(answer.acks[0].result.actions) == json.loads(answer.acks[0].result.actions_json)
        # Watched events carry both forms.
        await stub.CloseInstance(pb.CloseInstanceRequest(id="structs"))
        events = [e async for e in stub.WatchAuction(pb.WatchInstanceRequest(id="structs"))]
        bids = [e for e in events if e.event_json and json.loads(e.event_json).get("type") == "bid"]
        assert [e.event_json and from_struct(e.event) == json.loads(e.event_json) for e in bids] == [True] * 3
    finally:
        await channel.close()


async def test_setting_both_forms_is_refused(coordinators) -> None:
    cluster = coordinators(1)
    channel, stub = await _leader_stub(cluster.coordinator_endpoints)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            await stub.CreateAuction(pb.CreateInstanceRequest(kind="sealed", config_json="{}", config=to_struct({})))
        error = sdk.translate(caught.value)
        assert isinstance(error, sdk.InvalidArgument) and "config" in error.field_violations
    finally:
        await channel.close()
