"""The active coordinator's state: instances, ledger and variables in memory, every change durable first.

The engine exists only while its node leads the ``coordinator`` role. It
loads everything from etcd in one consistent read (replaying each instance's
accepted events), then applies requests one at a time on the event loop: it
validates, applies the pure mechanism / ledger / variable core, and stages
the resulting atomic write group with the :class:`~coordinator.store.Committer`.
A request is answered only after its group is durable. Deadline ticks are
delivered by one timer task; on takeover every open instance gets a tick at
once, which resumes its clock and closes what fell due while no one led.

Errors are :class:`~mabeam.errors.ServiceError`: the servicer passes them on.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import grpc

from coordinator import keys
from coordinator.instances import Ack, Instance, check_sequence, new_meta, rebuild
from coordinator.ledger import Account, InsufficientFunds, Ledger, LedgerError
from coordinator.mechanisms import MechanismClosed, MechanismError
from coordinator.mechanisms.base import ScheduleTick, mechanism_classes
from coordinator.mechanisms.errors import EscrowRefused
from coordinator.mechanisms.market import MarketMechanism
from coordinator.metrics import CoordinatorMetrics
from coordinator.store import CommitFailed, Committer, read_prefix
from coordinator.variables import (
    VariableError,
    VariableRecord,
    VersionMismatch,
    compare_and_set,
    extract,
    pruned_version,
    validate,
)
from coordinator.variables import create as create_variable_record
from mabeam import keys as mabeam_keys
from mabeam.errors import ServiceError
from mabeam.etcd.client import EtcdClient, EtcdError
from mabeam.security.quota import quota_exceeded
from mabeam.v1 import mesh_pb2

log = logging.getLogger(__name__)


def wall_ms() -> int:
    """Milliseconds since the Unix epoch (the coordinator's clock ticks)."""
    return time.time_ns() // 1_000_000


def not_found(what: str) -> ServiceError:
    """NOT_FOUND for an unknown instance, variable or account."""
    return ServiceError(grpc.StatusCode.NOT_FOUND, f"{what} does not exist", "NOT_REGISTERED")


def not_durable(error: CommitFailed) -> ServiceError:
    """UNAVAILABLE: the write was not confirmed; retry with the same client id (it is idempotent)."""
    return ServiceError(grpc.StatusCode.UNAVAILABLE, f"not durable, retry with the same id: {error}",
                        "NOT_DURABLE", retry_after_s=0.5)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class Engine:
    """All coordinator state of one leader term (see the module docstring)."""

    def __init__(self, client: EtcdClient, cluster: str, committer: Committer, term: int,
                 clock: Callable[[], int] = wall_ms, metrics: CoordinatorMetrics | None = None) -> None:
        self.client = client
        self.metrics = metrics
        self.cluster = cluster
        self.committer = committer
        self.term = term
        self.clock = clock
        self.instances: dict[str, Instance] = {}
        self.ledger = Ledger()
        self.variables: dict[tuple[str, str], VariableRecord] = {}
        self.history: dict[tuple[str, str], deque[VariableRecord]] = {}
        self.operations: dict[tuple[str, str], dict[str, Any]] = {}
        self._timers: list[tuple[int, str]] = []
        self._timer_wake = asyncio.Event()
        self._background: set[asyncio.Future[int]] = set()

    # -- loading ------------------------------------------------------------------

    async def load(self) -> int:
        """Read every coordinator key in one consistent range and rebuild the state; returns the revision."""
        kvs, revision = await read_prefix(self.client, keys.base(self.cluster))
        base = keys.base(self.cluster)
        metas: dict[str, dict[str, Any]] = {}
        events: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        acks: dict[str, dict[str, Ack | bytes]] = {}
        ends: dict[str, dict[str, Any]] = {}
        for kv in kvs:
            parts = kv.key[len(base):].decode().split("/")
            if parts[0] == "inst" and len(parts) >= 3:
                iid = parts[1]
                if parts[2] == "meta":
                    metas[iid] = json.loads(kv.value)
                elif parts[2] == "ev":
                    events.setdefault(iid, []).append((int(parts[3]), json.loads(kv.value)))
                elif parts[2] == "cid":
                    acks.setdefault(iid, {})["/".join(parts[3:])] = kv.value  # parsed when a retry needs it
                elif parts[2] == "end":
                    ends[iid] = json.loads(kv.value)
            elif parts[0] == "acct":
                self.ledger.accounts[(parts[1], parts[2])] = Account.from_json(kv.value)
            elif parts[0] == "hold":
                self.ledger.holds[(parts[1], parts[2], parts[3])] = int(kv.value)
            elif parts[0] == "op":
                self.operations[(parts[1], parts[2])] = json.loads(kv.value)
            elif parts[0] == "var":
                self.variables[(parts[1], parts[2])] = VariableRecord.from_json(kv.value)
            elif parts[0] == "varh":
                self.history.setdefault((parts[1], parts[2]), deque()).append(VariableRecord.from_json(kv.value))
        for iid, meta in metas.items():
            ordered = sorted(events.get(iid, []), key=lambda item: item[0])
            check_sequence(iid, [seq for seq, _ in ordered])
            self.instances[iid] = rebuild(meta, [record for _, record in ordered], acks.get(iid, {}),
                                          ends.get(iid))
        for record in self.variables.values():
            kept = self.history.setdefault((record.tenant, record.name), deque())
            self.history[(record.tenant, record.name)] = deque(sorted(kept, key=lambda r: r.version),
                                                               maxlen=record.history_limit)
        log.info("loaded %d instances, %d accounts, %d variables at revision %d", len(self.instances),
                 len(self.ledger.accounts), len(self.variables), revision)
        return revision

    async def start(self, node_id: str, address: str) -> None:
        """Claim the term (a fenced write), finish interrupted settlements and tick every open instance."""
        await self.committer.commit({keys.leader(self.cluster): _dumps(
            {"node_id": node_id, "address": address, "term": self.term, "since_ms": self.clock()})})
        for instance in self.instances.values():
            if instance.state != "open":
                if self.ledger.holds_for(instance.id):
                    self._track(self._settle(instance))
            else:
                # Its usage unit (instances opened before units were written get theirs now; a put is idempotent).
                self._track(self.committer.stage({self._usage_key(instance): b""}))
                try:
                    _, done = self._accept(instance, {"type": "tick"}, None)
                    self._track(done)
                except ServiceError:
                    pass  # the mechanism takes no ticks (markets)
                for at in instance.config_deadlines():
                    self._schedule(instance, at)

    async def run(self) -> None:
        """Deliver deadline ticks until cancelled (runs beside the committer in the owner's TaskGroup)."""
        while True:
            if not self._timers:
                self._timer_wake.clear()
                await self._timer_wake.wait()
                continue
            at, iid = self._timers[0]
            delay = at - self.clock()
            if delay > 0:
                self._timer_wake.clear()
                try:
                    async with asyncio.timeout(delay / 1000):  # not wait_for: 3.11's can swallow a cancel
                        await self._timer_wake.wait()
                except TimeoutError:
                    pass
                continue
            heapq.heappop(self._timers)
            instance = self.instances.get(iid)
            if instance is None or instance.state != "open":
                continue
            if at != instance.mechanism_tick and at not in instance.config_deadlines():
                continue  # superseded by a later ScheduleTick
            try:
                _, done = self._accept(instance, {"type": "tick"}, None)
            except ServiceError:
                continue  # the mechanism takes no ticks (markets) or is closed
            self._track(done)

    def _track(self, future: asyncio.Future[int]) -> None:
        self._background.add(future)
        future.add_done_callback(self._background.discard)

    def _schedule(self, instance: Instance, at: int) -> None:
        heapq.heappush(self._timers, (at, instance.id))
        self._timer_wake.set()

    # -- instances ------------------------------------------------------------------

    def instance(self, instance_id: str, family: str | None = None) -> Instance:
        """The instance, or NOT_FOUND; FAILED_PRECONDITION when it belongs to another family."""
        instance = self.instances.get(instance_id)
        if instance is None:
            raise not_found(f"instance {instance_id!r}")
        if family is not None and instance.family != family:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                         f"instance {instance_id!r} is a {instance.kind} ({instance.family}), not a {family}",
                         "WRONG_FAMILY")
        return instance

    async def create(self, family: str, tenant: str, kind: str, config: dict[str, Any], instance_id: str,
                     escrow: bool, seller: str, bind_variable: str, bind_field: str) -> Instance:
        """Create and persist a new instance (idempotent for a repeated identical instance_id)."""
        classes = {cls.kind: cls for cls in mechanism_classes() if cls.family == family}
        if kind not in classes:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"kind {kind!r} is not a {family}; use one of "
                               f"{sorted(classes)}", "INVALID_FIELD")
        try:
            mechanism = classes[kind](config)
        except MechanismError as error:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(error), "INVALID_FIELD") from None
        normalized = mechanism.config.model_dump(mode="json")
        if bind_variable and (tenant, bind_variable) not in self.variables:
            raise not_found(f"variable {bind_variable!r} (bind_variable)")
        if instance_id in self.instances:
            existing = self.instances[instance_id]
            same = (existing.kind, existing.meta["config"], existing.tenant) == (kind, normalized, tenant)
            if same:
                return existing
            raise ServiceError(grpc.StatusCode.ALREADY_EXISTS, f"instance {instance_id!r} exists with another "
                         "definition", "NAME_TAKEN")
        limit = await self._instance_limit(tenant)
        if limit:
            # Exact: this engine is the only one writing (fenced), and nothing awaits between count and insert.
            opened = sum(1 for other in self.instances.values() if other.tenant == tenant and other.state == "open")
            if opened >= limit:
                raise quota_exceeded(tenant, "max_instances", limit, opened, f"creating a {kind}")
        if instance_id in self.instances:  # created meanwhile (the quota read awaited): the same rules apply
            return await self.create(family, tenant, kind, config, instance_id, escrow, seller, bind_variable,
                                     bind_field)
        instance_id = instance_id or uuid.uuid4().hex[:16]
        meta = new_meta(instance_id, tenant, kind, normalized, self.clock(), escrow, seller, bind_variable,
                        bind_field)
        instance = Instance(meta=meta, mechanism=mechanism)
        self.instances[instance_id] = instance
        try:
            await self.committer.commit({keys.meta(self.cluster, instance_id): _dumps(meta),
                                         self._usage_key(instance): b""})
        except CommitFailed as error:
            raise not_durable(error) from None
        for at in instance.config_deadlines():
            self._schedule(instance, at)
        return instance

    def _usage_key(self, instance: Instance) -> bytes:
        """The instance's unit of its tenant's ``max_instances`` use, kept while it is open (written in the
        groups that open and end it), so meshd's GetTenantUsage and /metrics count open instances."""
        return mabeam_keys.usage_holder(self.cluster, instance.tenant, "instances", instance.id)

    async def _instance_limit(self, tenant: str) -> float:
        """The tenant's ``max_instances`` as etcd holds it now (0: unlimited; the tenant's quota is read per
        create, so a new limit applies to the next create on the active coordinator, whichever it is)."""
        try:
            kv = await self.client.get(mabeam_keys.quota(self.cluster, tenant))
        except EtcdError as error:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, f"cannot read tenant {tenant!r}'s quota in etcd: {error}; "
                               "retry", "ETCD_UNAVAILABLE", retry_after_s=0.5) from None
        if kv is None:
            return 0.0
        quota = mesh_pb2.TenantQuota()
        try:
            quota.ParseFromString(kv.value)
        except Exception:  # noqa: BLE001 - a quota that does not parse limits nothing (meshd logs it)
            return 0.0
        return float(quota.max_instances)

    async def submit(self, instance_id: str, family: str | None, client_event_id: str,
                     event: dict[str, Any]) -> tuple[Ack, bool]:
        """Apply one client event durably; returns (ack, duplicate)."""
        ack, duplicate, done = self.stage_submit(instance_id, family, client_event_id, event)
        if done is not None:
            try:
                await done
            except CommitFailed as error:
                raise not_durable(error) from None
        return ack, duplicate

    def stage_submit(self, instance_id: str, family: str | None, client_event_id: str,
                     event: dict[str, Any]) -> tuple[Ack, bool, asyncio.Future[int] | None]:
        """Apply one client event and stage its write group without waiting: (ack, duplicate, durable).

        The ack may be given to the client only once ``durable`` (None: already durable) has a
        result; if it raises CommitFailed the event is not (surely) durable. Refusals raise
        ServiceError with nothing changed.
        """
        metrics = self.metrics
        if metrics is None:
            return self._stage_submit(instance_id, family, client_event_id, event)
        try:
            staged = self._stage_submit(instance_id, family, client_event_id, event)
        except ServiceError:
            metrics.rejected.inc()
            raise
        (metrics.duplicates if staged[1] else metrics.accepted).inc()
        return staged

    def _stage_submit(self, instance_id: str, family: str | None, client_event_id: str,
                      event: dict[str, Any]) -> tuple[Ack, bool, asyncio.Future[int] | None]:
        instance = self.instance(instance_id, family)
        seen = instance.acks.get(client_event_id)
        if seen is not None:
            ack, done = seen
            if isinstance(ack, bytes):
                ack = Ack.from_json(ack)
                instance.acks[client_event_id] = (ack, done)
            return ack, True, done
        if instance.state != "open":
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, f"instance {instance_id!r} is {instance.state}",
                         "INSTANCE_CLOSED")
        if event.get("type") == "tick":
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "ticks are delivered by the coordinator's clock",
                               "INVALID_FIELD")
        ack, done = self._accept(instance, event, client_event_id)
        return ack, False, done

    def _accept(self, instance: Instance, event: dict[str, Any], cid: str | None) -> tuple[Ack, asyncio.Future[int]]:
        """Validate and apply one event, stage its write group; raises ServiceError with nothing changed."""
        mech = instance.mechanism
        try:
            parsed = mech.parse_event(event)
        except MechanismError as error:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(error), "INVALID_FIELD") from None
        record = parsed.model_dump(mode="json")
        now = max(self.clock(), mech.now or 0)
        agent = mech.participant(parsed)
        new_hold: int | None = None
        if instance.escrow and agent is not None:
            current = self.ledger.hold_of(instance.id, instance.tenant, agent)
            try:
                new_hold = mech.required_hold(parsed, current, now)
                if new_hold is not None:
                    self.ledger.check_hold(instance.id, instance.tenant, agent, new_hold)
            except EscrowRefused as error:
                raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, str(error), "ESCROW_REFUSED") from None
            except InsufficientFunds as error:
                raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, f"over budget: {error}",
                             "INSUFFICIENT_FUNDS") from None
        try:
            actions = mech.apply(parsed, now)
        except MechanismClosed as error:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, str(error), "INSTANCE_CLOSED") from None
        except MechanismError as error:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(error), "INVALID_EVENT") from None
        # Accepted: from here on nothing may raise before the group is staged.
        instance.seq += 1
        seq = instance.seq
        action_dicts = [a.model_dump(mode="json") for a in actions]
        if new_hold is not None and agent is not None:
            self.ledger.set_hold(instance.id, instance.tenant, agent, new_hold)
        if instance.escrow:
            for change in mech.hold_changes(actions):
                self.ledger.pay_from_hold(instance.id, instance.tenant, change.agent, change.used, change.price,
                                          change.payee)
        for action in actions:
            if isinstance(action, ScheduleTick):
                instance.mechanism_tick = action.at
                self._schedule(instance, action.at)
        state = "concluded" if mech.concluded else "open"
        ack = Ack(seq, action_dicts, state, now)
        group: dict[bytes, bytes | None] = {
            keys.event(self.cluster, instance.id, seq): _dumps({"now": now, "event": record, "cid": cid,
                                                                "term": self.term}),
        }
        if cid is not None:
            group[keys.client_event(self.cluster, instance.id, cid)] = ack.to_json()
        self._ledger_writes(group)
        if mech.concluded:
            instance.state = "concluded"
            self._conclude(instance, group)
        done = self.committer.stage(group)
        if cid is not None:
            instance.acks[cid] = (ack, done)
        if mech.concluded and self.ledger.holds_for(instance.id):
            self._track(self._settle(instance))
        return ack, done

    def _conclude(self, instance: Instance, group: dict[bytes, bytes | None]) -> None:
        """Add the end record (and a bound variable's new version) to the concluding event's group."""
        outcome = instance.mechanism.outcome().model_dump(mode="json")
        receipt = instance.mechanism.receipt()
        end: dict[str, Any] = {"state": "concluded", "outcome": outcome, "receipt_hash": receipt.hash,
                               "at": instance.mechanism.now}
        name = instance.meta.get("bind_variable")
        if name:
            try:
                value = extract(outcome, instance.meta.get("bind_field", ""))
                record = self.variables[(instance.tenant, name)]
                self._stage_variable(compare_and_set(record, record.version, value, self.clock(),
                                                     f"instance:{instance.id}"), group)
            except (KeyError, VariableError) as error:
                end["bind_error"] = f"variable {name!r} not set: {error}"
        instance.end = end
        group[keys.end(self.cluster, instance.id)] = _dumps(end)
        group[self._usage_key(instance)] = None

    def _settle(self, instance: Instance) -> asyncio.Future[int]:
        """Pay winners out of their holds and release every other hold, one atomic group per agent."""
        payments = {}
        if instance.state == "concluded" and instance.mechanism.concluded:
            payments = {p.agent: p.price for p in instance.mechanism.payments()}
        seller = instance.meta.get("seller") or None
        last: asyncio.Future[int] | None = None
        for (tenant, agent) in sorted(self.ledger.holds_for(instance.id)):
            if agent in payments:
                self.ledger.settle(instance.id, tenant, agent, payments[agent], seller)
            else:
                self.ledger.release(instance.id, tenant, agent)
            group: dict[bytes, bytes | None] = {}
            self._ledger_writes(group)
            last = self.committer.stage(group)
        if last is None:
            last = asyncio.get_running_loop().create_future()
            last.set_result(0)
        return last

    def _ledger_writes(self, group: dict[bytes, bytes | None]) -> None:
        accounts, holds = self.ledger.take_dirty()
        for (tenant, agent), account in accounts.items():
            group[keys.account(self.cluster, tenant, agent)] = account.to_json()
        for (iid, tenant, agent), amount in holds.items():
            group[keys.hold(self.cluster, iid, tenant, agent)] = str(amount).encode() if amount else None

    async def cancel(self, instance_id: str, reason: str) -> Instance:
        """End an open instance without an outcome and release its escrow."""
        instance = self.instance(instance_id)
        if instance.state != "open":
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, f"instance {instance_id!r} is {instance.state}",
                         "INSTANCE_CLOSED")
        instance.state = "cancelled"
        instance.end = {"state": "cancelled", "reason": reason, "at": self.clock()}
        done = self.committer.stage({keys.end(self.cluster, instance.id): _dumps(instance.end),
                                     self._usage_key(instance): None})
        settled = self._settle(instance)
        try:
            await done
            await settled
        except CommitFailed as error:
            raise not_durable(error) from None
        return instance

    async def close(self, instance_id: str) -> Instance:
        """Apply an explicit Close event (where the mechanism accepts one)."""
        instance = self.instance(instance_id)
        if instance.state != "open":
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, f"instance {instance_id!r} is {instance.state}",
                         "INSTANCE_CLOSED")
        _, done = self._accept(instance, {"type": "close"}, None)
        try:
            await done
        except CommitFailed as error:
            raise not_durable(error) from None
        return instance

    def book(self, instance_id: str) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """A market's resting orders aggregated per price: (bids best first, asks best first)."""
        instance = self.instance(instance_id, "market")
        mechanism = instance.mechanism
        assert isinstance(mechanism, MarketMechanism)  # family "market" kinds subclass it (see its docstring)
        levels: dict[tuple[str, int], list[int]] = {}
        for order in mechanism.resting():
            level = levels.setdefault((order.side, order.price), [0, 0])
            level[0] += order.remaining
            level[1] += 1
        bids = sorted(((p, q, n) for (s, p), (q, n) in levels.items() if s == "buy"), reverse=True)
        asks = sorted((p, q, n) for (s, p), (q, n) in levels.items() if s == "sell")
        return bids, asks

    # -- variables ------------------------------------------------------------------

    def variable(self, tenant: str, name: str) -> VariableRecord:
        """The current record, or NOT_FOUND."""
        record = self.variables.get((tenant, name))
        if record is None:
            raise not_found(f"variable {name!r} of tenant {tenant!r}")
        return record

    def _stage_variable(self, record: VariableRecord, group: dict[bytes, bytes | None]) -> None:
        key = (record.tenant, record.name)
        self.variables[key] = record
        self.history.setdefault(key, deque(maxlen=record.history_limit)).append(record)
        group[keys.variable(self.cluster, *key)] = record.to_json()
        group[keys.history(self.cluster, *key, record.version)] = record.to_json()
        old = pruned_version(record)
        if old is not None:
            group[keys.history(self.cluster, *key, old)] = None

    async def create_variable(self, tenant: str, name: str, schema: Any, value: Any,
                              history_limit: int) -> VariableRecord:
        """Create version 1 of a variable."""
        if (tenant, name) in self.variables:
            raise ServiceError(grpc.StatusCode.ALREADY_EXISTS, f"variable {name!r} already exists", "NAME_TAKEN")
        try:
            record = create_variable_record(tenant, name, schema, value, self.clock(), history_limit)
        except VariableError as error:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(error), "INVALID_FIELD") from None
        group: dict[bytes, bytes | None] = {}
        self._stage_variable(record, group)
        await self._commit(group)
        return record

    async def set_variable(self, tenant: str, name: str, expected_version: int, value: Any) -> VariableRecord:
        """Compare-and-set: ABORTED (VERSION_MISMATCH) when ``expected_version`` is stale."""
        current = self.variable(tenant, name)
        try:
            record = compare_and_set(current, expected_version, value, self.clock())
        except VersionMismatch as error:
            raise ServiceError(grpc.StatusCode.ABORTED, str(error), "VERSION_MISMATCH") from None
        except VariableError as error:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(error), "INVALID_FIELD") from None
        group: dict[bytes, bytes | None] = {}
        self._stage_variable(record, group)
        await self._commit(group)
        return record

    def check_value(self, tenant: str, name: str, value: Any) -> None:
        """Validate a value against a variable's schema (used by bindings and tests)."""
        validate(value, self.variable(tenant, name).schema)

    async def _commit(self, group: dict[bytes, bytes | None]) -> None:
        try:
            await self.committer.commit(group)
        except CommitFailed as error:
            raise not_durable(error) from None

    # -- ledger -----------------------------------------------------------------------

    async def deposit(self, tenant: str, agent: str, amount: int, op_id: str) -> tuple[Account, bool]:
        """Credit an account (idempotent by op_id); returns (balance, duplicate)."""
        if op_id and (tenant, op_id) in self.operations:
            done = self.operations[(tenant, op_id)]
            return Account(*done["balance"]), True
        try:
            balance = self.ledger.deposit(tenant, agent, amount)
        except LedgerError as error:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(error), "INVALID_FIELD") from None
        group: dict[bytes, bytes | None] = {}
        self._ledger_writes(group)
        if op_id:
            self.operations[(tenant, op_id)] = {"balance": [balance.available, balance.held]}
            group[keys.operation(self.cluster, tenant, op_id)] = _dumps(self.operations[(tenant, op_id)])
        await self._commit(group)
        return balance, False

    async def transfer(self, tenant: str, source: str, target: str, amount: int,
                       op_id: str) -> tuple[Account, Account, bool]:
        """Move credit; FAILED_PRECONDITION (INSUFFICIENT_FUNDS) rather than ever overdrawing."""
        if op_id and (tenant, op_id) in self.operations:
            done = self.operations[(tenant, op_id)]
            return Account(*done["from"]), Account(*done["to"]), True
        try:
            src, dst = self.ledger.transfer(tenant, source, target, amount)
        except InsufficientFunds as error:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, str(error), "INSUFFICIENT_FUNDS") from None
        except LedgerError as error:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(error), "INVALID_FIELD") from None
        group: dict[bytes, bytes | None] = {}
        self._ledger_writes(group)
        if op_id:
            self.operations[(tenant, op_id)] = {"from": [src.available, src.held], "to": [dst.available, dst.held]}
            group[keys.operation(self.cluster, tenant, op_id)] = _dumps(self.operations[(tenant, op_id)])
        await self._commit(group)
        return src, dst, False
