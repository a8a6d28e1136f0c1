"""A small typed async client for the etcd v3 API.

Why not aetcd's own ``Client``: it has no lease keepalive stream and does not
resume a watch after etcd goes away (see STACK-NOTES). We use aetcd only for
its generated gRPC stubs (``aetcd.rpc``) and keep the whole etcd boundary in
this module: every gRPC error from etcd is translated here, once, into the
:class:`EtcdError` tree.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from aetcd import rpc

log = logging.getLogger(__name__)


class EtcdError(Exception):
    """Any failure talking to etcd."""


class EtcdUnavailable(EtcdError):
    """etcd could not be reached (connection refused, closed, timed out)."""


class EtcdCompacted(EtcdError):
    """A watch asked for a revision that etcd has already compacted."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted; oldest available is {compact_revision}")
        self.compact_revision = compact_revision


class LeaseNotFound(EtcdError):
    """The lease does not exist (expired, revoked, or etcd lost it)."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd stores it."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A put or delete seen by a watch; ``kv.value`` is empty for deletes."""

    kind: str  # "put" | "delete"
    kv: KeyValue
    prev: KeyValue | None


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """The events of one watch response and the revision they bring the watcher to."""

    revision: int
    events: tuple[WatchEvent, ...]


def _kv(raw: rpc.KeyValue) -> KeyValue:
    return KeyValue(raw.key, raw.value, raw.create_revision, raw.mod_revision, raw.version, raw.lease)


def prefix_end(prefix: bytes) -> bytes:
    """The range end that makes [prefix, end) cover exactly the keys starting with prefix."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def closed_under_call() -> bool:
    """For an ``asyncio.CancelledError`` out of a gRPC call: True when the call's channel was closed under it
    (a :meth:`EtcdClient.failover`; grpc.aio reports that as a cancellation), False when the task itself is
    being cancelled and the error must propagate."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0


def _translate(error: grpc.aio.AioRpcError) -> EtcdError:
    """The one place etcd's gRPC errors become EtcdError subclasses."""
    code, details = error.code(), error.details() or ""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return EtcdUnavailable(f"etcd unavailable: {code.name}: {details}")
    if code == grpc.StatusCode.NOT_FOUND and "lease" in details:
        return LeaseNotFound(details)
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
        return EtcdCompacted(0)
    return EtcdError(f"etcd error {code.name}: {details}")


# --- transaction building blocks (etcd's Compare and RequestOp messages) ---


def cmp_create_revision(key: bytes, value: int, result: str = "EQUAL") -> rpc.Compare:
    """Compare a key's create revision (0 means the key does not exist)."""
    return rpc.Compare(key=key, target=rpc.Compare.CREATE, result=getattr(rpc.Compare, result),
                       create_revision=value)


def cmp_mod_revision(key: bytes, value: int, result: str = "EQUAL") -> rpc.Compare:
    """Compare a key's last modification revision."""
    return rpc.Compare(key=key, target=rpc.Compare.MOD, result=getattr(rpc.Compare, result), mod_revision=value)


def cmp_value(key: bytes, value: bytes, result: str = "EQUAL") -> rpc.Compare:
    """Compare a key's value."""
    return rpc.Compare(key=key, target=rpc.Compare.VALUE, result=getattr(rpc.Compare, result), value=value)


def cmp_lease(key: bytes, lease: int, result: str = "EQUAL") -> rpc.Compare:
    """Compare the lease a key is attached to."""
    return rpc.Compare(key=key, target=rpc.Compare.LEASE, result=getattr(rpc.Compare, result), lease=lease)


def op_put(key: bytes, value: bytes, lease: int = 0) -> rpc.RequestOp:
    """A put inside a transaction."""
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def op_delete(key: bytes, prefix: bool = False) -> rpc.RequestOp:
    """A delete (of one key, or of a prefix) inside a transaction."""
    end = prefix_end(key) if prefix else b""
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, range_end=end))


def op_get(key: bytes, prefix: bool = False) -> rpc.RequestOp:
    """A range read inside a transaction."""
    end = prefix_end(key) if prefix else b""
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key, range_end=end))


def op_count(prefix: bytes) -> rpc.RequestOp:
    """How many keys start with ``prefix``, inside a transaction (no values travel; see TxnResult.counts)."""
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=prefix, range_end=prefix_end(prefix), count_only=True))


@dataclass(frozen=True, slots=True)
class TxnResult:
    """Whether the transaction's compares held, its revision, and any ranges it read."""

    succeeded: bool
    revision: int
    ranges: tuple[tuple[KeyValue, ...], ...]
    #: The key count of each range, in order (what :func:`op_count` reads).
    counts: tuple[int, ...] = ()


def _target(endpoints: Sequence[str]) -> str:
    # gRPC's ipv4: scheme takes several addresses; pick_first fails over between them.
    if len(endpoints) == 1:
        return endpoints[0]
    return "ipv4:" + ",".join(endpoints)


#: Seconds in-flight calls on a channel left by :meth:`EtcdClient.failover` get before they are cancelled.
FAILOVER_GRACE = 1.0


class EtcdClient:
    """An async etcd v3 client on one gRPC channel at a time.

    ``timeout`` bounds every unary call. ``on_latency`` (if given) is called with
    (operation, seconds) after each unary call, for metrics.

    With several endpoints the channel's pick_first moves on by itself when an
    endpoint refuses or resets connections, but not when one goes silent (a
    partitioned host: the TCP connection stays open and nothing answers). Whoever
    notices silence — the lease session, whose keepalive stalls — calls
    :meth:`failover`: a new channel that starts at the next endpoint replaces the
    current one, and the old one is closed after :data:`FAILOVER_GRACE` seconds,
    which ends its watches and streams so their owners reopen them on the new one.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        timeout: float = 5.0,
        on_latency: Callable[[str, float], None] | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint (host:port) is required")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._on_latency = on_latency
        self._first = 0
        self.failovers = 0
        self._retiring: set[asyncio.Task[None]] = set()
        self._channel = self._open(0)

    def _open(self, first: int) -> grpc.aio.Channel:
        order = self.endpoints[first:] + self.endpoints[:first]
        channel = grpc.aio.insecure_channel(
            _target(order),
            options=[
                # Reconnect quickly after an outage instead of backing off for up to 2 minutes.
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self._kv = rpc.KVStub(channel)
        self._lease = rpc.LeaseStub(channel)
        self._watch = rpc.WatchStub(channel)
        self._maintenance = rpc.MaintenanceStub(channel)
        return channel

    @property
    def current_endpoint(self) -> str:
        """The endpoint the current channel tries first."""
        return self.endpoints[self._first]

    def failover(self, why: str) -> None:
        """Move to a new channel that starts at the next endpoint (see the class docstring)."""
        old = self._channel
        self._first = (self._first + 1) % len(self.endpoints)
        self._channel = self._open(self._first)
        self.failovers += 1
        log.warning("etcd: %s; moving to a new connection starting at %s", why, self.current_endpoint)
        task = asyncio.ensure_future(old.close(grace=FAILOVER_GRACE))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        """Close the channel; open watches and keepalives end."""
        await self._channel.close()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def _unary(self, name: str, call: Callable[..., Any], request: object, timeout: float | None = None) -> Any:
        start = time.perf_counter()
        try:
            # wait_for_ready: during a brief etcd restart, wait (bounded by timeout) instead of failing at once.
            return await call(request, timeout=timeout or self.timeout, wait_for_ready=True)
        except grpc.aio.AioRpcError as error:
            raise _translate(error) from None
        except grpc.aio.UsageError:
            # This client was closed (a daemon shutting down) while a request still used it: a coordinator's
            # bid stream asking for the leader after its node stopped got INTERNAL from this (found by the
            # rolling upgrade on the test bed). It is an unavailable etcd to the caller, not a crash.
            raise EtcdUnavailable(f"etcd {name}: the client is closed (shutting down)") from None
        except asyncio.CancelledError:
            if closed_under_call():
                raise EtcdUnavailable(f"etcd {name}: the connection was closed (failover)") from None
            raise
        finally:
            if self._on_latency is not None:
                self._on_latency(name, time.perf_counter() - start)

    # --- KV ---

    async def get(self, key: bytes) -> KeyValue | None:
        """The key's current value, or None."""
        resp = await self._unary("range", self._kv.Range, rpc.RangeRequest(key=key))
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def get_prefix(self, prefix: bytes, page: int = 2000) -> tuple[list[KeyValue], int]:
        """All keys under a prefix, as one consistent snapshot, and the revision it was read at.

        Read in pages of `page` keys, every page at the first page's revision: one range answer is a
        single gRPC message, which fails past 4 MiB once a prefix holds tens of thousands of keys
        (found by ``python -m bench coordinator``: a takeover could not load its state). A page that is
        still too large is retried with half as many keys.
        """
        kvs: list[KeyValue] = []
        start, end, revision = prefix, prefix_end(prefix), 0
        while True:
            request = rpc.RangeRequest(key=start, range_end=end, limit=page, revision=revision)
            try:
                resp = await self._unary("range", self._kv.Range, request)
            except EtcdError as error:
                if "RESOURCE_EXHAUSTED" in str(error) and page > 1:
                    page //= 2
                    continue
                raise
            revision = revision or int(resp.header.revision)
            kvs.extend(_kv(kv) for kv in resp.kvs)
            if not resp.more or not resp.kvs:
                return kvs, revision
            start = resp.kvs[-1].key + b"\0"

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """Write a key; returns the new store revision."""
        resp = await self._unary("put", self._kv.Put, rpc.PutRequest(key=key, value=value, lease=lease))
        return int(resp.header.revision)

    async def delete(self, key: bytes, prefix: bool = False) -> int:
        """Delete a key (or a prefix); returns how many keys were deleted."""
        end = prefix_end(key) if prefix else b""
        resp = await self._unary("delete", self._kv.DeleteRange, rpc.DeleteRangeRequest(key=key, range_end=end))
        return int(resp.deleted)

    async def txn(
        self,
        compare: Sequence[rpc.Compare],
        success: Sequence[rpc.RequestOp] = (),
        failure: Sequence[rpc.RequestOp] = (),
    ) -> TxnResult:
        """An etcd transaction: if all compares hold run `success`, else `failure`."""
        resp = await self._unary(
            "txn", self._kv.Txn, rpc.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))
        )
        read = [r.response_range for r in resp.responses if r.WhichOneof("response") == "response_range"]
        ranges = tuple(tuple(_kv(kv) for kv in r.kvs) for r in read)
        return TxnResult(bool(resp.succeeded), int(resp.header.revision), ranges, tuple(int(r.count) for r in read))

    async def revision(self) -> int:
        """The store's current revision."""
        resp = await self._unary("range", self._kv.Range, rpc.RangeRequest(key=b"\0", limit=1, count_only=True))
        return int(resp.header.revision)

    # --- leases ---

    async def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease; returns (lease id, granted ttl)."""
        resp = await self._unary("lease_grant", self._lease.LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl))
        if resp.error:
            raise EtcdError(f"lease grant failed: {resp.error}")
        return int(resp.ID), int(resp.TTL)

    async def revoke(self, lease_id: int, timeout: float | None = None) -> None:
        """Revoke a lease, deleting every key attached to it (no error if already gone)."""
        try:
            await self._unary("lease_revoke", self._lease.LeaseRevoke, rpc.LeaseRevokeRequest(ID=lease_id), timeout)
        except LeaseNotFound:
            pass

    def keepalive_stream(self) -> grpc.aio.StreamStreamCall:
        """A raw LeaseKeepAlive bidi stream (the session owns its lifecycle)."""
        return self._lease.LeaseKeepAlive()

    # --- watch ---

    async def watch_prefix(self, prefix: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        """Every change under `prefix` from `start_revision` on, in order, until cancelled.

        Raises EtcdUnavailable when the stream breaks (aetcd does not resume;
        the caller re-reads and watches again) and EtcdCompacted when the start
        revision is gone.
        """
        call = self._watch.Watch(wait_for_ready=True)
        try:
            await call.write(
                rpc.WatchRequest(
                    create_request=rpc.WatchCreateRequest(
                        key=prefix, range_end=prefix_end(prefix), start_revision=start_revision,
                        prev_kv=True, progress_notify=True,
                    )
                )
            )
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise EtcdUnavailable("etcd closed the watch stream")
                if resp.compact_revision:
                    raise EtcdCompacted(int(resp.compact_revision))
                if resp.canceled:
                    raise EtcdUnavailable(f"etcd cancelled the watch: {resp.cancel_reason}")
                if resp.created and not resp.events:
                    continue
                events = tuple(
                    WatchEvent(
                        "delete" if ev.type == rpc.Event.DELETE else "put",
                        _kv(ev.kv),
                        _kv(ev.prev_kv) if ev.HasField("prev_kv") else None,
                    )
                    for ev in resp.events
                )
                yield WatchBatch(int(resp.header.revision), events)
        except grpc.aio.AioRpcError as error:
            raise _translate(error) from None
        except asyncio.InvalidStateError:
            # grpc.aio refuses writes once the server has closed the stream.
            raise EtcdUnavailable("etcd closed the watch stream") from None
        except asyncio.CancelledError:
            if closed_under_call():
                raise EtcdUnavailable("the watch's etcd connection was closed (failover)") from None
            raise
        finally:
            call.cancel()

    async def wait_connected(self, timeout: float) -> None:
        """Wait until a status call succeeds, or raise EtcdUnavailable after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self._unary("status", self._maintenance.Status, rpc.StatusRequest(), timeout=1.0)
                return
            except EtcdUnavailable:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.1)
