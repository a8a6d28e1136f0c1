"""Watch streams served from etcd by any coordinator node: instance events, market trades, variable versions.

Each stream reads what is stored, then watches from the next revision, so it
sees every durable change exactly once and in order, whoever leads. Events of
one revision are sorted by their key (event seq, variable version) before
they are sent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc

from coordinator import keys
from coordinator.mechanisms.base import registered_mechanisms
from coordinator.store import read_prefix
from coordinator.variables import VariableRecord
from mabeam.errors import FieldViolation, ServiceError, invalid_argument
from mabeam.etcd.client import EtcdClient
from mabeam.security.context import tenant_for, visible
from mabeam.structs import to_struct
from mabeam.v1 import coordinator_pb2 as pb

_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def _check_id(value: str, field: str) -> None:
    if not value or len(value) > 64 or not set(value) <= _ID_CHARS:
        raise invalid_argument([FieldViolation(field, "a valid id is required")])


async def _instance_records(client: EtcdClient, cluster: str, instance_id: str
                            ) -> AsyncIterator[tuple[str, Any]]:
    """("meta", meta) first, then ("event", (seq, record)) in order, then ("end", end) once; from etcd."""
    meta_kv = await client.get(keys.meta(cluster, instance_id))
    meta = json.loads(meta_kv.value) if meta_kv is not None else None
    if meta is None or not visible(meta.get("tenant", "default")):  # another tenant's: as if it did not exist
        raise ServiceError(grpc.StatusCode.NOT_FOUND, f"instance {instance_id!r} does not exist", "NOT_REGISTERED")
    yield "meta", meta
    prefix = keys.instance(cluster, instance_id)
    event_prefix = keys.events(cluster, instance_id)
    end_key = keys.end(cluster, instance_id)
    kvs, revision = await read_prefix(client, prefix)
    last = 0
    end: Any = None
    for kv in kvs:
        if kv.key.startswith(event_prefix):
            seq = int(kv.key[len(event_prefix):])
            last = seq
            yield "event", (seq, json.loads(kv.value))
        elif kv.key == end_key:
            end = json.loads(kv.value)
    if end is not None:
        yield "end", end
        return
    async for batch in client.watch_prefix(prefix, revision + 1):
        puts = sorted((ev.kv.key, ev.kv.value) for ev in batch.events if ev.kind == "put")
        for key, value in puts:
            if key.startswith(event_prefix):
                seq = int(key[len(event_prefix):])
                if seq > last:
                    last = seq
                    yield "event", (seq, json.loads(value))
        for key, value in puts:
            if key == end_key:
                yield "end", json.loads(value)
                return


async def watch_instance(client: EtcdClient, cluster: str, request: pb.WatchInstanceRequest
                         ) -> AsyncIterator[pb.InstanceEvent]:
    """Events with seq >= from_seq, then a final message carrying the end state."""
    _check_id(request.id, "id")
    async for kind, item in _instance_records(client, cluster, request.id):
        if kind == "event":
            seq, record = item
            if seq >= request.from_seq:
                event = record["event"]
                yield pb.InstanceEvent(seq=seq, now_ms=record["now"], event_json=json.dumps(event),
                                       event=to_struct(event) if isinstance(event, dict) else None)
        elif kind == "end":
            outcome = item.get("outcome")
            yield pb.InstanceEvent(final_state=item["state"],
                                   outcome_json=json.dumps(outcome) if outcome is not None else "")


async def watch_trades(client: EtcdClient, cluster: str, request: pb.WatchInstanceRequest
                       ) -> AsyncIterator[pb.TradeEvent]:
    """A market's trades, by replaying its events through the pure mechanism (deterministic)."""
    _check_id(request.id, "id")
    mechanism: Any = None
    async for kind, item in _instance_records(client, cluster, request.id):
        if kind == "meta":
            cls = registered_mechanisms().get(item["kind"])
            if cls is None:
                raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, f"instance {request.id!r} is a "
                                   f"{item['kind']}, a kind this node has not loaded", "WRONG_FAMILY")
            if cls.family != "market":
                raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, f"instance {request.id!r} is a "
                                   f"{item['kind']}, not a market", "WRONG_FAMILY")
            mechanism = cls(item["config"])
        elif kind == "event":
            seq, record = item
            for action in mechanism.apply(record["event"], record["now"]):
                if action.type == "trade" and seq >= request.from_seq:
                    yield pb.TradeEvent(seq=seq, buy_order=action.buy_order, sell_order=action.sell_order,
                                        buyer=action.buyer, seller=action.seller, price=action.price,
                                        quantity=action.quantity, at_ms=action.at)


def _version_message(record: VariableRecord) -> pb.Variable:
    return pb.Variable(tenant=record.tenant, name=record.name, schema_json=json.dumps(record.schema),
                       value_json=json.dumps(record.value), version=record.version,
                       updated_at_ms=record.updated_at_ms, set_by=record.set_by, history_limit=record.history_limit)


async def watch_variable(client: EtcdClient, cluster: str, request: pb.WatchVariableRequest
                         ) -> AsyncIterator[pb.Variable]:
    """Kept versions >= from_version (0: the current one), then every new version in order."""
    tenant = tenant_for(request.tenant)
    _check_id(tenant, "tenant")
    _check_id(request.name, "name")
    key = keys.variable(cluster, tenant, request.name)
    current = await client.get(key)
    if current is None:
        raise ServiceError(grpc.StatusCode.NOT_FOUND, f"variable {request.name!r} does not exist", "NOT_REGISTERED")
    kvs, revision = await read_prefix(client, keys.history_prefix(cluster, tenant, request.name))
    head = VariableRecord.from_json(current.value)
    start = request.from_version or head.version
    last = start - 1
    for kv in kvs:
        record = VariableRecord.from_json(kv.value)
        if record.version > last:
            last = record.version
            yield _version_message(record)
    async for batch in client.watch_prefix(key, revision + 1):
        for ev in batch.events:
            if ev.kind == "put" and ev.kv.key == key:
                record = VariableRecord.from_json(ev.kv.value)
                if record.version > last:
                    last = record.version
                    yield _version_message(record)
