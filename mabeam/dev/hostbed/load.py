"""The load generator of one bed host: agents calling each other, a bid stream, name and group registrations.

``python -m mabeam.dev.hostbed.load SPEC_JSON`` runs inside a host's namespace
(the bed starts it like a daemon) and drives only public interfaces: the
Python SDK against this host's agentd and meshd and against every
coordinator. It prints ``load ready`` once its clients exist, then runs four
loops until SIGTERM:

* **calls** — the host's ``relay`` agent calls each ``counter`` agent of the
  bed in turn with ``{"add": 1}`` (agent → agent across hosts, by name);
* **bids** — sealed bids on the host's own auction through one
  ``BidStream`` that follows the coordinator leader;
* **names** — a fresh name registered through the local meshd;
* **joins** — a fresh group membership through the local meshd.

Every operation is one JSON line in ``out`` (:class:`Record` fields), written
after it ended, with wall-clock start and end times, the deadline it ran
under and either its answer or the error's code, reason and message. On
SIGTERM each loop finishes the operation it is in and the process exits.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import grpc

#: The extra seconds AgentClient.call gives gRPC beyond the agent call's own timeout (mabeam_client.agents).
AGENT_CALL_GRPC_MARGIN = 5.0


@dataclass
class LoadSpec:
    """What one host's load generator does (the bed writes it; see the module docstring)."""

    host: str
    agentd: str
    meshd: str
    coordinators: list[str]
    auction: str
    relay: str
    targets: list[str]
    out: str
    call_timeout: float = 2.0
    call_interval: float = 0.05
    bid_interval: float = 0.05
    name_interval: float = 0.2
    join_interval: float = 0.5
    registry_timeout: float = 3.0
    bid_failover_timeout: float = 10.0
    #: The first operation number of each loop: a load generator started again on a host (after a rolling
    #: upgrade) numbers on from here, so its names, group members and bid ids are new ones.
    first: int = 0


@dataclass
class Record:
    """One operation as the load generator saw it."""

    op: str  # call | bid | name | join
    host: str
    key: str  # call: target agent; bid: client event id; name: the name; join: group/agent
    t0: float
    t1: float
    deadline: float  # seconds the operation was allowed, as the client set it
    ok: bool
    value: Any = None  # call: the counter's value; bid: [seq, duplicate]
    code: str = ""  # gRPC status name, or EXCEPTION for anything that is not a typed SDK error
    reason: str = ""
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Recorder:
    """Runs operations and writes one :class:`Record` line for each."""

    def __init__(self, host: str, out: TextIO) -> None:
        self.host = host
        self.out = out

    async def run(self, op: str, key: str, deadline: float, action: Callable[[], Awaitable[Any]]) -> Any:
        from mabeam_client.errors import MabeamError

        t0 = time.time()
        record = Record(op, self.host, key, t0, t0, deadline, ok=False)
        try:
            record.value = await action()
            record.ok = True
        except MabeamError as error:
            record.code, record.reason, record.message = error.code.name, error.reason, error.message[:300]
        except grpc.RpcError as error:  # an SDK path that did not translate (a finding in itself)
            record.code, record.message = f"RAW_{error.code().name}", str(error.details())[:300]
        except Exception as error:  # noqa: BLE001 - recorded: the invariant checks report it
            record.code, record.message = "EXCEPTION", repr(error)[:300]
        record.t1 = time.time()
        self.out.write(json.dumps(asdict(record)) + "\n")
        self.out.flush()
        return record.value if record.ok else None


async def _every(interval: float, stop: asyncio.Event, step: Callable[[int], Awaitable[None]], first: int = 0) -> None:
    k = first
    while not stop.is_set():
        await step(k)
        k += 1
        try:
            async with asyncio.timeout(interval):  # not wait_for: 3.11's can swallow a cancel
                await stop.wait()
        except TimeoutError:
            pass


async def run(spec: LoadSpec) -> None:
    """Run the four loops until SIGTERM (see the module docstring)."""
    from mabeam_client.agents import AgentClient
    from mabeam_client.coordinator import CoordinatorClient
    from mabeam_client.mesh import MeshClient

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with open(spec.out, "a") as out:  # noqa: ASYNC230 - once at start; lines are small appends
        rec = Recorder(spec.host, out)
        agents = AgentClient(spec.agentd, timeout=spec.registry_timeout)
        mesh = MeshClient(spec.meshd, timeout=spec.registry_timeout)
        coordinator = CoordinatorClient(spec.coordinators, timeout=5.0, failover_timeout=spec.bid_failover_timeout)
        bids = coordinator.bid_stream()
        print("load ready", flush=True)

        async def call(k: int) -> None:
            target = spec.targets[k % len(spec.targets)]
            message = {"to": target, "msg": {"add": 1}, "timeout": spec.call_timeout}
            await rec.run("call", target, spec.call_timeout + 1.0 + AGENT_CALL_GRPC_MARGIN,
                          lambda: agents.call(spec.relay, message, timeout=spec.call_timeout + 1.0))

        async def bid(k: int) -> None:
            cid = f"{spec.host}-{k}"
            event = {"type": "bid", "bidder": f"b-{cid}", "amount": k + 1}

            async def submit() -> list[Any]:
                ack = await bids.submit(spec.auction, event, client_event_id=cid)
                return [ack.seq, ack.duplicate]

            await rec.run("bid", cid, spec.bid_failover_timeout + 5.0, submit)

        async def name(k: int) -> None:
            name_ = f"n-{spec.host}-{k}"
            await rec.run("name", name_, spec.registry_timeout,
                          lambda: _ok(mesh.register_name(name_, agent_id=f"a-{spec.host}-{k}")))

        async def join(k: int) -> None:
            group, agent = f"g-{spec.host}", f"m-{spec.host}-{k}"
            await rec.run("join", f"{group}/{agent}", spec.registry_timeout,
                          lambda: _ok(mesh.join_group(group, agent)))

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_every(spec.call_interval, stop, call, spec.first))
                tg.create_task(_every(spec.bid_interval, stop, bid, spec.first))
                tg.create_task(_every(spec.name_interval, stop, name, spec.first))
                tg.create_task(_every(spec.join_interval, stop, join, spec.first))
        finally:
            await bids.close()
            for client in (agents, mesh, coordinator):
                await client.close()


async def _ok(awaitable: Awaitable[Any]) -> bool:
    await awaitable
    return True


def main(argv: list[str] | None = None) -> int:
    """Entry point: one argument, the :class:`LoadSpec` as JSON."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mabeam.dev.hostbed.load SPEC_JSON", file=sys.stderr)
        return 2
    spec = LoadSpec(**json.loads(args[0]))
    asyncio.run(run(spec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
