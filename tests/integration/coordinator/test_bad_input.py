"""Bad input on every method: a typed status with a readable message, and no state change."""

from __future__ import annotations

import grpc

from mabeam.v1 import coordinator_pb2 as pb
from mabeam.v1 import coordinator_pb2_grpc
from mabeam_client.coordinator import CoordinatorClient

INV, NF, FP, AB, AE = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                       grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED, grpc.StatusCode.ALREADY_EXISTS)


async def _state(coord: CoordinatorClient) -> tuple:
    instances = [(i.id, i.state, i.event_count) for i in await coord.list_instances()]
    balances = [(b.agent, b.available, b.held) for b in await coord.balances()]
    variables = [(v.name, v.version) for v in await coord.list_variables()]
    return instances, balances, variables


async def test_every_method_refuses_bad_input_without_changing_state(coordinators) -> None:
    cluster = coordinators(1)
    async with CoordinatorClient(cluster.coordinator_endpoints) as coord:
        await coord.deposit("rich", 100)
        await coord.create_variable("v", {"type": "integer"}, 1)
        sealed = await coord.create_auction("sealed", {"pricing": "first"}, escrow=True)
        closed = await coord.create_auction("sealed", {"pricing": "first"})
        await coord.close_instance(closed.id)
        vote = await coord.create_vote({"rule": "majority", "options": ["x", "y"], "voters": {"a": 1}})
        market = await coord.create_market("double_auction", {})
        before = await _state(coord)
        bid = '{"type":"bid","bidder":"rich","amount":5}'
        cases = [
            ("CreateAuction", pb.CreateInstanceRequest(kind="nope", config_json="{}"), INV),
            ("CreateAuction", pb.CreateInstanceRequest(kind="sealed", config_json="{not json"), INV),
            ("CreateAuction", pb.CreateInstanceRequest(kind="sealed", config_json='{"pricing":"third"}'), INV),
            ("CreateAuction", pb.CreateInstanceRequest(kind="vote", config_json="{}"), INV),
            ("CreateAuction", pb.CreateInstanceRequest(kind="sealed", config_json='{"pricing":"first"}',
                                                       bind_variable="missing"), NF),
            ("CreateAuction", pb.CreateInstanceRequest(kind="sealed", config_json='{"pricing":"second"}',
                                                       instance_id=sealed.id), AE),
            ("CreateAuction", pb.CreateInstanceRequest(kind="sealed", config_json="{}", tenant="a/b"), INV),
            ("GetAuction", pb.GetInstanceRequest(id="unknown"), NF),
            ("GetAuction", pb.GetInstanceRequest(id=""), INV),
            ("GetAuction", pb.GetInstanceRequest(id=vote.id), FP),
            ("ListAuctions", pb.ListInstancesRequest(state="weird"), INV),
            ("CancelAuction", pb.CancelInstanceRequest(id="unknown"), NF),
            ("CancelAuction", pb.CancelInstanceRequest(id=closed.id), FP),
            ("CloseInstance", pb.CloseInstanceRequest(id=closed.id), FP),
            ("SubmitBid", pb.SubmitEventRequest(id="unknown", event_json=bid), NF),
            ("SubmitBid", pb.SubmitEventRequest(id=closed.id, event_json=bid), FP),
            ("SubmitBid", pb.SubmitEventRequest(id=sealed.id, event_json='{"type":"bid","bidder":"rich"}'), INV),
            ("SubmitBid", pb.SubmitEventRequest(id=sealed.id, event_json='[1]'), INV),
            ("SubmitBid", pb.SubmitEventRequest(id=sealed.id, event_json='{"type":"tick"}'), INV),
            ("SubmitBid", pb.SubmitEventRequest(id=sealed.id, event_json=bid, client_event_id="bad id!"), INV),
            ("SubmitBid", pb.SubmitEventRequest(id=sealed.id,
                                                event_json='{"type":"bid","bidder":"rich","amount":500}'), FP),
            ("SubmitBid", pb.SubmitEventRequest(id=sealed.id,
                                                event_json='{"type":"bid","bidder":"poor","amount":5}'), FP),
            ("SubmitBid", pb.SubmitEventRequest(id=vote.id, event_json=bid), FP),
            ("CreateNegotiation", pb.CreateInstanceRequest(kind="contract_net", config_json="{}"), INV),
            ("GetNegotiation", pb.GetInstanceRequest(id=sealed.id), FP),
            ("Negotiate", pb.SubmitEventRequest(id="unknown", event_json="{}"), NF),
            ("CreateVote", pb.CreateInstanceRequest(kind="vote", config_json='{"rule":"majority"}'), INV),
            ("GetVote", pb.GetInstanceRequest(id="unknown"), NF),
            ("CastVote", pb.SubmitEventRequest(id=vote.id, event_json='{"type":"cast","voter":"z","choice":"x"}'),
             INV),
            ("CreateMarket", pb.CreateInstanceRequest(kind="double_auction", config_json='{"traders":5}'), INV),
            ("GetMarket", pb.GetInstanceRequest(id=vote.id), FP),
            ("PlaceOrder", pb.SubmitEventRequest(id=market.id, event_json='{"type":"limit"}'), INV),
            ("CancelOrder", pb.CancelOrderRequest(id=market.id, order_id="none", trader="t"), INV),
            ("CancelOrder", pb.CancelOrderRequest(id=market.id, order_id="", trader="t"), INV),
            ("GetBook", pb.GetInstanceRequest(id=sealed.id), FP),
            ("CreateVariable", pb.CreateVariableRequest(name="v", schema_json="{}", initial_json="1"), AE),
            ("CreateVariable", pb.CreateVariableRequest(name="w", schema_json='{"type":"integer"}',
                                                        initial_json='"x"'), INV),
            ("CreateVariable", pb.CreateVariableRequest(name="w", schema_json='{"minimum":"a"}',
                                                        initial_json="1"), INV),
            ("CreateVariable", pb.CreateVariableRequest(name="w", schema_json="{}", initial_json=""), INV),
            ("CreateVariable", pb.CreateVariableRequest(name="w", schema_json="{}", initial_json="1",
                                                        history_limit=5000), INV),
            ("GetVariable", pb.GetVariableRequest(name="missing"), NF),
            ("SetVariable", pb.SetVariableRequest(name="v", value_json="2", expected_version=7), AB),
            ("SetVariable", pb.SetVariableRequest(name="v", value_json='"s"', expected_version=1), INV),
            ("SetVariable", pb.SetVariableRequest(name="v", value_json="2"), INV),
            ("SetVariable", pb.SetVariableRequest(name="missing", value_json="2", expected_version=1), NF),
            ("VariableHistory", pb.VariableHistoryRequest(name="missing"), NF),
            ("Deposit", pb.DepositRequest(agent="rich", amount=0), INV),
            ("Deposit", pb.DepositRequest(agent="", amount=5), INV),
            ("Transfer", pb.TransferRequest(from_agent="rich", to_agent="x", amount=1000), FP),
            ("Transfer", pb.TransferRequest(from_agent="rich", to_agent="rich", amount=1), INV),
            ("Transfer", pb.TransferRequest(from_agent="rich", to_agent="x", amount=-1), INV),
            ("GetBalance", pb.GetBalanceRequest(agent="no/slash"), INV),
            ("ListBalances", pb.ListBalancesRequest(tenant="bad tenant"), INV),
        ]
        async with grpc.aio.insecure_channel(cluster.coordinator_endpoints[0]) as channel:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            for method, request, code in cases:
                try:
                    await getattr(stub, method)(request)
                    raise AssertionError(f"{method} accepted {request}")
                except grpc.aio.AioRpcError as error:
                    assert error.code() == code, f"{method}: {error.code()} {error.details()}"
                    assert error.details(), method
            for method in ("WatchAuction", "WatchTrades"):
                try:
                    async for _ in getattr(stub, method)(pb.WatchInstanceRequest(id="unknown")):
                        pass
                    raise AssertionError(f"{method} streamed an unknown instance")
                except grpc.aio.AioRpcError as error:
                    assert error.code() == NF
            try:
                async for _ in stub.WatchVariable(pb.WatchVariableRequest(name="missing")):
                    pass
                raise AssertionError("WatchVariable streamed an unknown variable")
            except grpc.aio.AioRpcError as error:
                assert error.code() == NF
        assert await _state(coord) == before
