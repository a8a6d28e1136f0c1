"""The SubmitBids stream through real coordinator processes: durable acks, idempotency, per-bid errors, redirects."""

from __future__ import annotations

import asyncio
import json
import signal

import grpc
import pytest

from coordinator import keys
from coordinator.store import read_prefix
from mabeam.etcd.client import EtcdClient
from mabeam.v1 import coordinator_pb2 as pb
from mabeam.v1 import coordinator_pb2_grpc
from mabeam_client.coordinator import CoordinatorClient, leader_hint
from mabeam_client.errors import FailedPrecondition, InvalidArgument, NotFound, translate


def _bid(instance_id: str, cid: str, bidder: str, amount: int) -> pb.SubmitEventRequest:
    return pb.SubmitEventRequest(id=instance_id, client_event_id=cid,
                                 event_json=json.dumps({"type": "bid", "bidder": bidder, "amount": amount}))


async def test_each_ack_arrives_only_after_its_bid_is_in_etcd(coordinators, etcd_server, cluster_name) -> None:
    # 64 bidders share one stream; the moment each ack arrives, its event and idempotency keys are in etcd.
    cluster = coordinators(1)
    etcd = EtcdClient([etcd_server.endpoint])
    async with CoordinatorClient(cluster.coordinator_endpoints) as coord:
        auction = await coord.create_auction("sealed", {"pricing": "second"})
        async with coord.bid_stream() as bids:
            async def bidder(i: int) -> None:
                ack = await bids.submit(auction.id, {"type": "bid", "bidder": f"b{i}", "amount": i + 1}, f"c{i}")
                stored = await etcd.get(keys.client_event(cluster_name, auction.id, f"c{i}"))
                assert stored is not None and json.loads(stored.value)["seq"] == ack.seq
                event = await etcd.get(keys.event(cluster_name, auction.id, ack.seq))
                assert event is not None and json.loads(event.value)["cid"] == f"c{i}"

            await asyncio.gather(*(bidder(i) for i in range(64)))
        seqs = sorted(json.loads(kv.value)["seq"] for kv in
                      (await etcd.get_prefix(keys.base(cluster_name) + f"inst/{auction.id}/cid/".encode()))[0])
        assert seqs == list(range(1, 65))
        assert (await coord.get_auction(auction.id)).event_count == 64
    await etcd.close()


async def test_stream_bids_are_idempotent_by_client_event_id(coordinators) -> None:
    # The same client id, in one stream, in a later stream or through SubmitBid, is applied once.
    cluster = coordinators(1)
    async with CoordinatorClient(cluster.coordinator_endpoints) as coord:
        auction = await coord.create_auction("sealed", {"pricing": "first"})
        event = {"type": "bid", "bidder": "a", "amount": 5}
        async with coord.bid_stream() as bids:
            first, again = await asyncio.gather(bids.submit(auction.id, event, "x1"),
                                                bids.submit(auction.id, event, "x1"))
            assert first.seq == again.seq == 1
            assert not first.duplicate
        async with coord.bid_stream() as bids:
            later = await bids.submit(auction.id, event, "x1")
        unary = await coord.submit_bid(auction.id, event, client_event_id="x1")
        assert (later.seq, later.duplicate, unary.seq, unary.duplicate) == (1, True, 1, True)
        assert (await coord.get_auction(auction.id)).event_count == 1


async def test_bad_bids_get_typed_errors_and_the_stream_goes_on(coordinators) -> None:
    # One message mixing good and bad bids: each bad one gets its own typed error, the good ones land,
    # and the same stream keeps accepting bids afterwards.
    cluster = coordinators(1)
    async with CoordinatorClient(cluster.coordinator_endpoints) as coord:
        auction = await coord.create_auction("sealed", {"pricing": "first"})
        closed = await coord.create_auction("sealed", {"pricing": "first"})
        await coord.close_instance(closed.id)
        async with grpc.aio.insecure_channel(cluster.coordinator_endpoints[0]) as channel:
            call = coordinator_pb2_grpc.CoordinatorServiceStub(channel).SubmitBids()
            await call.write(pb.SubmitBidsRequest(bids=[
                _bid(auction.id, "ok1", "a", 5),
                pb.SubmitEventRequest(id=auction.id, client_event_id="badjson", event_json="{not json"),
                _bid(auction.id, "neg", "b", -1),
                _bid("no-such-auction", "nf", "c", 5),
                _bid(closed.id, "late", "d", 5),
                _bid(auction.id, "", "e", 5),
                _bid(auction.id, "bad id with spaces", "f", 5),
                _bid(auction.id, "ok2", "g", 6),
            ]))
            acks: dict[str, pb.BidAck] = {}
            while len(acks) < 8:
                response = await call.read()
                assert response is not grpc.aio.EOF
                acks.update({ack.client_event_id: ack for ack in response.acks})
            codes = {cid: (ack.error.code, ack.error.reason) for cid, ack in acks.items()
                     if ack.WhichOneof("outcome") == "error"}
            invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert codes == {
                "badjson": (invalid, "INVALID_FIELD"),
                "neg": (invalid, "INVALID_FIELD"),
                "nf": (grpc.StatusCode.NOT_FOUND.value[0], "NOT_REGISTERED"),
                "late": (grpc.StatusCode.FAILED_PRECONDITION.value[0], "INSTANCE_CLOSED"),
                "": (invalid, "INVALID_FIELD"),
                "bad id with spaces": (invalid, "INVALID_FIELD"),
            }
            assert "client_event_id" in acks[""].error.message
            assert [acks["ok1"].result.seq, acks["ok2"].result.seq] == [1, 2]
            await call.write(pb.SubmitBidsRequest(bids=[_bid(auction.id, "ok3", "h", 7)]))
            response = await call.read()
            assert [(a.client_event_id, a.result.seq) for a in response.acks] == [("ok3", 3)]
            await call.done_writing()
            assert await call.read() is grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK
        # Through the SDK a refused bid raises on its own submit only.
        async with coord.bid_stream() as bids:
            with pytest.raises(InvalidArgument):
                await bids.submit(auction.id, {"type": "bid", "bidder": "x", "amount": 0})
            with pytest.raises(NotFound):
                await bids.submit("missing", {"type": "bid", "bidder": "x", "amount": 1})
            with pytest.raises(FailedPrecondition):
                await bids.submit(closed.id, {"type": "bid", "bidder": "x", "amount": 1})
            assert (await bids.submit(auction.id, {"type": "bid", "bidder": "y", "amount": 1})).seq == 4
        assert (await coord.get_auction(auction.id)).event_count == 4


async def test_standby_ends_the_stream_with_wrong_node_and_the_sdk_follows(coordinators) -> None:
    # A stream opened on the standby ends at once with UNAVAILABLE / WRONG_NODE naming the leader;
    # the SDK given only the standby follows the hint and its bids land on the leader.
    cluster = coordinators(2)
    leader = cluster.leader()
    standby = next(n for n in cluster.coordinators if n is not leader)
    async with grpc.aio.insecure_channel(standby.endpoint) as channel:
        call = coordinator_pb2_grpc.CoordinatorServiceStub(channel).SubmitBids()
        with pytest.raises(grpc.RpcError) as raised:
            await call.read()
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert translate(raised.value).reason == "WRONG_NODE"
        assert leader_hint(raised.value) == leader.endpoint
    async with CoordinatorClient(leader.endpoint) as setup:
        auction = await setup.create_auction("sealed", {"pricing": "first"})
    async with CoordinatorClient(standby.endpoint) as coord:
        async with coord.bid_stream() as bids:
            ack = await bids.submit(auction.id, {"type": "bid", "bidder": "a", "amount": 3})
            assert ack.seq == 1 and bids.reconnects >= 1
        assert coord.redirects >= 1


async def test_deposed_leader_ends_its_stream_and_the_sdk_resends_to_the_new_leader(coordinators) -> None:
    # A stream is open on the leader; the leader is paused until the standby takes over and resumed.
    # The old leader's stream ends with UNAVAILABLE (WRONG_NODE or NOT_DURABLE: its fence fails), never
    # acking a bid it could not make durable, and the SDK moves to the new leader with the same ids.
    cluster = coordinators(2)
    old = cluster.leader()
    new = next(n for n in cluster.coordinators if n is not old)
    async with CoordinatorClient([old.endpoint, new.endpoint], failover_timeout=20.0) as coord:
        auction = await coord.create_auction("sealed", {"pricing": "first"})
        async with grpc.aio.insecure_channel(old.endpoint) as channel:
            call = coordinator_pb2_grpc.CoordinatorServiceStub(channel).SubmitBids()
            await call.write(pb.SubmitBidsRequest(bids=[_bid(auction.id, "r1", "a", 1)]))
            assert (await call.read()).acks[0].result.seq == 1
            async with coord.bid_stream() as bids:
                assert (await bids.submit(auction.id, {"type": "bid", "bidder": "b", "amount": 2}, "s1")).seq == 2
                old.signal(signal.SIGSTOP)
                try:
                    pending = asyncio.create_task(
                        bids.submit(auction.id, {"type": "bid", "bidder": "c", "amount": 3}, "s2"))
                    await asyncio.to_thread(cluster.leader, 15.0, old)
                finally:
                    old.signal(signal.SIGCONT)
                await call.write(pb.SubmitBidsRequest(bids=[_bid(auction.id, "r2", "d", 4)]))
                with pytest.raises(grpc.RpcError) as raised:
                    while True:
                        response = await asyncio.wait_for(call.read(), 10)
                        assert response is not grpc.aio.EOF
                        assert not any(a.client_event_id == "r2" and a.WhichOneof("outcome") == "result"
                                       for a in response.acks), "the deposed leader acknowledged a bid"
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
                assert translate(raised.value).reason in ("WRONG_NODE", "NOT_DURABLE")
                late = await asyncio.wait_for(pending, 20)
                assert bids.reconnects >= 1
        final = await coord.get_auction(auction.id)
        seen, count = [], 0
        async for item in coord.watch(auction.id):
            event = item.event
            count += 1
            if event["type"] == "bid":  # the new leader's takeover tick is logged too
                seen.append((event["bidder"], item.seq))
            if count == final.event_count:
                break
        assert seen == [("a", 1), ("b", 2), ("c", late.seq)]


async def test_takeover_loads_state_in_pages(etcd_server, cluster_name) -> None:
    # read_prefix returns every key at one revision however small the page (a single range of a large
    # state would exceed gRPC's 4 MiB message limit and no standby could ever take over).
    etcd = EtcdClient([etcd_server.endpoint])
    base = keys.base(cluster_name)
    for i in range(53):
        await etcd.put(base + f"k{i:03d}".encode(), str(i).encode())
    kvs, revision = await read_prefix(etcd, base, page=7)
    assert [kv.key for kv in kvs] == [base + f"k{i:03d}".encode() for i in range(53)]
    assert revision == await etcd.revision()
    big = b"x" * (1024 * 1024)
    for i in range(5):
        await etcd.put(base + f"big{i}".encode(), big)
    kvs, _ = await read_prefix(etcd, base, page=1000)  # 5 MiB in one page: halved until it fits
    assert len(kvs) == 58
    await etcd.close()
