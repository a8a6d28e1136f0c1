"""The Python SDK's conformance runner: runs clients/conformance/scenarios against a live cluster.

    python clients/conformance/python_runner.py run --cluster cluster.json --scenarios DIR --run ID
    python clients/conformance/python_runner.py serve --cluster cluster.json --node 1 --name relay-python

Every SDK has a runner with the same arguments, the same ops and the same result shapes
(clients/conformance/README.md); the harness (clients/conformance/harness.py) starts the cluster
and runs them all. Output: one ``PASS name`` or ``FAIL name: why`` line per scenario, then
``N passed, M failed``; the exit code is 1 when any failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from mabeam_client.agents import AgentClient
from mabeam_client.coordinator import CoordinatorClient
from mabeam_client.errors import MabeamError
from mabeam_client.external import ExternalAgent, Incoming
from mabeam_client.mesh import MeshClient

LANG = "python"
_VAR = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


class StepFailed(AssertionError):
    """A step's result or error did not match what the scenario expects."""


def substitute(value: Any, variables: dict[str, Any]) -> Any:
    """Replace ${var} in every string (a string that is exactly one ${var} takes the variable's type)."""
    if isinstance(value, str):
        whole = _VAR.fullmatch(value)
        if whole:
            return variables[whole.group(1)]
        return _VAR.sub(lambda m: str(variables[m.group(1)]), value)
    if isinstance(value, list):
        return [substitute(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, variables) for k, v in value.items()}
    return value


def lookup_path(result: Any, path: str) -> Any:
    """The value at a dotted path (list indexes are numbers; ``#`` is a list's length)."""
    value = result
    for part in path.split("."):
        if part == "#":
            value = len(value)
        elif isinstance(value, list):
            value = value[int(part)]
        elif isinstance(value, dict):
            if part not in value:
                raise StepFailed(f"result has no {path!r}: {json.dumps(result)}")
            value = value[part]
        else:
            raise StepFailed(f"result has no {path!r}: {json.dumps(result)}")
    return value


def matches(actual: Any, expected: Any) -> bool:
    """JSON equality (numbers by value), or a matcher {lt: n} / {gt: n}."""
    if isinstance(expected, dict) and len(expected) == 1 and next(iter(expected)) in ("lt", "gt"):
        op, bound = next(iter(expected.items()))
        return isinstance(actual, int | float) and (actual < bound if op == "lt" else actual > bound)
    if isinstance(expected, bool) or isinstance(actual, bool):
        return actual is expected
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return float(actual) == float(expected)
    if isinstance(expected, list):
        return isinstance(actual, list) and len(actual) == len(expected) and \
            all(matches(a, e) for a, e in zip(actual, expected, strict=True))
    if isinstance(expected, dict):
        return isinstance(actual, dict) and actual.keys() == expected.keys() and \
            all(matches(actual[k], v) for k, v in expected.items())
    return bool(actual == expected)


def check(step: dict[str, Any], result: Any, error: MabeamError | None) -> None:
    """Raise StepFailed unless the outcome is what the step expects."""
    wanted = step.get("error")
    if wanted is not None:
        if error is None:
            raise StepFailed(f"expected {wanted['code']}, got a result: {json.dumps(result)}")
        if error.code.name != wanted["code"]:
            raise StepFailed(f"expected {wanted['code']}, got {error.code.name}: {error.message}")
        if "reason" in wanted and error.reason != wanted["reason"]:
            raise StepFailed(f"expected reason {wanted['reason']}, got {error.reason!r}: {error.message}")
        if "field" in wanted and wanted["field"] not in error.field_violations:
            raise StepFailed(f"expected a violation of {wanted['field']!r}, got {error.field_violations}")
        return
    if error is not None:
        raise StepFailed(f"{error.code.name} ({error.reason}): {error.message}")
    for path, expected in (step.get("expect") or {}).items():
        actual = lookup_path(result, path)
        if not matches(actual, expected):
            raise StepFailed(f"{path}: expected {json.dumps(expected)}, got {json.dumps(actual)} "
                             f"in {json.dumps(result)[:600]}")


class Relay:
    """The relay behaviour every SDK implements (scenarios 05 and 08): append this language to the trail,
    call the next hop within the deadline of the call being handled, remember how the last hop went."""

    def __init__(self) -> None:
        self.last: dict[str, Any] = {"code": "NONE", "elapsed_ms": 0}

    async def on_call(self, msg: Any, incoming: Incoming) -> Any:
        if msg == "last":
            return self.last
        hops, trail = list(msg.get("hops", [])), [*msg.get("trail", []), LANG]
        if not hops:
            return {"hops": [], "trail": trail}
        hop = hops.pop(0)
        to, body = (hop["to"], hop["msg"]) if isinstance(hop, dict) else (hop, {"hops": hops, "trail": trail})
        started = time.monotonic()
        try:
            reply = await incoming.agent.call(to, body)
            self.last = {"code": "OK", "elapsed_ms": int((time.monotonic() - started) * 1000)}
            return reply
        except MabeamError as error:
            self.last = {"code": error.code.name, "elapsed_ms": int((time.monotonic() - started) * 1000)}
            raise


async def control(address: str, op: str, args: dict[str, Any]) -> Any:
    """Ask the harness to kill or restart a daemon (one JSON line each way; see harness.Control)."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(json.dumps({"op": op, "args": args}).encode() + b"\n")
        await writer.drain()
        answer = json.loads(await reader.readline())
    finally:
        writer.close()
    if not answer.get("ok"):
        raise StepFailed(f"{op}: {answer.get('error')}")
    return answer["result"]


class Runner:
    """Runs scenario steps with the Python SDK against the cluster described in cluster.json."""

    def __init__(self, cluster: dict[str, Any], run_id: str) -> None:
        self.cluster = cluster
        self.run_id = run_id
        self.meshes: dict[int, MeshClient] = {}
        self.agentds: dict[int, AgentClient] = {}
        self.coordinator = CoordinatorClient([n["coordinator"] for n in cluster["nodes"] if n.get("coordinator")],
                                             failover_timeout=20.0)
        self.agents: dict[str, ExternalAgent] = {}
        self.bids: list[asyncio.Task[Any]] = []
        self.bid_stream = None
        self.bid_calls: asyncio.Task[list[BaseException | None]] | None = None
        self.watch: tuple[asyncio.Task[None], list[Any], list[BaseException], asyncio.Event]

    def node(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.cluster["nodes"][int(args.get("node", 1)) - 1]  # type: ignore[no-any-return]

    def mesh(self, args: dict[str, Any]) -> MeshClient:
        index = int(args.get("node", 1))
        if index not in self.meshes:
            self.meshes[index] = MeshClient(self.node(args)["meshd"])
        return self.meshes[index]

    def agentd(self, args: dict[str, Any]) -> AgentClient:
        index = int(args.get("node", 1))
        if index not in self.agentds:
            self.agentds[index] = AgentClient(self.node(args)["agentd"])
        return self.agentds[index]

    async def close(self) -> None:
        for agent in self.agents.values():
            await agent.stop()
        if self.bid_stream is not None:
            await self.bid_stream.close()
        for client in [*self.meshes.values(), *self.agentds.values()]:
            await client.close()
        await self.coordinator.close()

    # ------------------------------------------------------------------ ops

    async def op(self, name: str, a: dict[str, Any]) -> Any:  # noqa: C901 - one dispatch table, flat
        if name == "members":
            members = await self.mesh(a).members()
            return {"count": len(members), "node_ids": sorted(m.node_id for m in members)}
        if name == "leader":
            leader = await self.mesh(a).leader(a.get("role", ""))
            return {"node_id": leader.node_id, "term": leader.term}
        if name in ("register_name", "lookup"):
            mesh = self.mesh(a)
            entry = (await mesh.register_name(a["name"], agent_id=a["agent_id"]) if name == "register_name"
                     else await mesh.lookup(a["name"]))
            return {"name": entry.name, "node_id": entry.target.node_id, "agent_id": entry.target.agent_id}
        if name == "group_members":
            members = await self.mesh(a).group_members(a["group"])
            return {"count": len(members), "node_ids": sorted(m.member.node_id for m in members)}
        if name == "attach_agent":
            return await self.attach(a)
        if name == "detach_agent":
            await self.agents.pop(a["name"]).stop()
            return {}
        if name == "agent_call":
            return {"reply": await self.agents[a["from"]].call(a["to"], a.get("msg"), timeout=a.get("timeout"))}
        if name == "agent_cast":
            await self.agents[a["from"]].cast(a["to"], a.get("msg"))
            return {}
        if name == "agent_cast_group":
            await self.agents[a["from"]].cast_group(a["group"], a.get("msg"), a.get("mode", "all"))
            return {}
        if name == "mesh_call":
            reply = await self.mesh(a).call(a["to"], b"\xc0", timeout=float(a.get("timeout", 5)))
            return {"payload_size": len(reply.payload)}
        if name == "spawn":
            info = await self.agentd(a).spawn(a["type"], a.get("args") or {}, name=a.get("name"),
                                              tenant=a.get("tenant", ""))
            return {"name": info.name, "type": info.type, "agent_id": info.agent_id}
        if name == "call":
            timeout = float(a.get("timeout", 5))
            return {"reply": await self.agentd(a).call(a["agent"], a.get("msg"), timeout=timeout,
                                                        tenant=a.get("tenant", ""))}
        if name == "cast":
            await self.agentd(a).cast(a["agent"], a.get("msg"))
            return {}
        if name == "stop_agent":
            await self.agentd(a).stop(a["agent"])
            return {}
        if name == "create_auction":
            instance = await self.coordinator.create_auction(a["kind"], a["config"])
            return {"id": instance.id, "state": instance.state}
        if name == "bid_stream_submit":
            if self.bid_stream is None:
                self.bid_stream = self.coordinator.bid_stream()
            for i in range(int(a["first"]), int(a["first"]) + int(a["count"])):
                event = {"type": "bid", "bidder": f"bidder-{i}", "amount": int(a["amount_base"]) + i - 1}
                self.bids.append(asyncio.create_task(self.bid_stream.submit(a["auction"], event)))
            return {}
        if name == "bid_stream_wait":
            outcomes = await asyncio.gather(*self.bids, return_exceptions=True)
            self.bids = []
            refused = [o for o in outcomes if isinstance(o, BaseException)]
            return {"acked": len(outcomes) - len(refused), "refused": len(refused),
                    "errors": [str(e) for e in refused[:3]]}
        if name == "bid_calls_start":
            return await self.bid_calls_start(a)
        if name == "bid_calls_wait":
            assert self.bid_calls is not None, "bid_calls_wait before bid_calls_start"
            outcomes, self.bid_calls = await self.bid_calls, None
            failed = [o for o in outcomes if o is not None]
            return {"acked": len(outcomes) - len(failed), "failed": len(failed), "errors": [repr(e) for e in failed[:3]]}
        if name == "set_tenant_quota":
            from mabeam.v1 import mesh_pb2

            quota = await self.mesh(a).set_tenant_quota(mesh_pb2.TenantQuota(
                tenant=a["tenant"], max_agents=int(a.get("max_agents", 0)), max_instances=int(a.get("max_instances", 0))))
            return {"tenant": quota.tenant, "max_agents": quota.max_agents, "max_instances": quota.max_instances}
        if name == "tenant_usage":
            usage = await self.mesh(a).tenant_usage(a.get("tenant", ""))
            return {"tenant": usage.tenant, "max_agents": usage.quota.max_agents, "max_instances": usage.quota.max_instances,
                    "usage": {u.quota: {"used": u.used, "limit": u.limit, "exact": u.exact} for u in usage.usage}}
        if name == "members_with":
            return await self.members_with(a)
        if name == "create_auction_with":
            return await self.create_auction_with(a)
        if name in ("kill_daemon", "restart_daemon", "issue_token"):
            return await control(self.cluster["control"], name, a)
        if name == "kill_coordinator_leader":
            # The harness kills it (it knows the pid of a daemon restarted since this runner started).
            leader = await self.coordinator.leader()
            await control(self.cluster["control"], "kill_daemon", {"node": leader.leader_node_id, "kind": "coordinator"})
            return {"node_id": leader.leader_node_id}
        if name == "watch_variable_start":
            return await self.watch_variable_start(a)
        if name == "watch_variable_wait":
            return await self.watch_variable_wait(a)
        if name == "close_instance":
            instance = await self.coordinator.close_instance(a["id"])
            return {"state": instance.state, "outcome": instance.outcome}
        if name in ("create_variable", "set_variable", "get_variable"):
            if name == "create_variable":
                var = await self.coordinator.create_variable(a["name"], a["schema"], a["initial"])
            elif name == "set_variable":
                var = await self.coordinator.set_variable(a["name"], a["value"], int(a["expected_version"]))
            else:
                var = await self.coordinator.get_variable(a["name"])
            return {"version": var.version, "value": var.value}
        if name.startswith("run_"):
            return await self.run_op(name, a)
        raise StepFailed(f"unknown op {name!r}")

    async def watch_variable_start(self, a: dict[str, Any]) -> Any:
        """Watch a variable in the background from its current version; returns once that one arrived."""
        seen: list[Any] = []
        errors: list[BaseException] = []
        changed = asyncio.Event()

        async def consume() -> None:
            try:
                async for variable in self.coordinator.watch_variable(a["name"]):
                    seen.append(variable)
                    changed.set()
            except Exception as error:  # noqa: BLE001 - counted: the scenario expects none
                errors.append(error)
                changed.set()

        self.watch = (asyncio.create_task(consume()), seen, errors, changed)
        await asyncio.wait_for(changed.wait(), 30)
        return {}

    async def watch_variable_wait(self, a: dict[str, Any]) -> Any:
        """Wait until the watch delivered ``until_version`` (or failed, or 30 s passed); stop it."""
        task, seen, errors, changed = self.watch
        deadline = time.monotonic() + 30
        while not errors and not (seen and seen[-1].version >= int(a["until_version"])):
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
        task.cancel()
        return {"versions": [v.version for v in seen], "values": [v.value for v in seen], "errors": len(errors),
                "error": repr(errors[0]) if errors else ""}

    async def create_auction_with(self, a: dict[str, Any]) -> Any:
        """CreateAuction through a coordinator client built with the step's token (and the cluster's TLS files)."""
        from mabeam_client.security import ClientSecurity

        given = self.cluster.get("security") or {}
        security = ClientSecurity(token=a["token"], **{k: given.get(k, "") for k in ("tls_ca", "tls_cert", "tls_key")})
        endpoints = [n["coordinator"] for n in self.cluster["nodes"] if n.get("coordinator")]
        async with CoordinatorClient(endpoints, failover_timeout=20.0, security=security) as coordinator:
            instance = await coordinator.create_auction(a["kind"], a["config"])
        return {"id": instance.id, "state": instance.state}

    async def members_with(self, a: dict[str, Any]) -> Any:
        """ListMembers with credentials chosen by the step (options, not the environment): the cluster's
        token (``token: true``), none (``false``) or the given string; TLS with the client certificate or not."""
        from mabeam_client.security import ClientSecurity

        given = self.cluster.get("security") or {}
        token = given.get("token", "") if a.get("token") is True else (a.get("token") or "")
        tls = {k: given.get(k, "") for k in ("tls_ca", "tls_cert", "tls_key")} if a.get("tls") else {}
        async with MeshClient(self.node(a)["meshd"], security=ClientSecurity(token=token, **tls)) as mesh:
            members = await mesh.members()
        return {"count": len(members)}

    async def bid_calls_start(self, a: dict[str, Any]) -> Any:
        """Unary SubmitBid calls, ``concurrency`` at a time, each with its bidder as idempotency key; returns
        once ``acked_before`` were acknowledged (so what follows, a kill, lands in the middle of them)."""
        bidders = iter(range(1, int(a["count"]) + 1))
        outcomes: list[BaseException | None] = []
        enough = asyncio.Event()

        async def caller() -> None:
            for i in bidders:
                event = {"type": "bid", "bidder": f"bidder-{i}", "amount": int(a["amount_base"]) + i - 1}
                try:
                    await self.coordinator.submit_bid(a["auction"], event, client_event_id=f"{a['auction']}-{i}")
                    outcomes.append(None)
                except Exception as error:  # noqa: BLE001 - counted: the scenario expects none
                    outcomes.append(error)
                if len(outcomes) >= int(a.get("acked_before", 0)):
                    enough.set()

        async def all_calls() -> list[BaseException | None]:
            await asyncio.gather(*(caller() for _ in range(int(a.get("concurrency", 1)))))
            enough.set()
            return outcomes

        self.bid_calls = asyncio.create_task(all_calls())
        await enough.wait()
        return {}

    async def run_op(self, name: str, a: dict[str, Any]) -> Any:
        """The durable-run ops (RunService on the node's agentd)."""
        from mabeam_client.runs import RunClient

        async with RunClient([self.node(a)["agentd"]]) as runs:
            if name == "run_start":
                started = await runs.start(a["agent_type"], a.get("input"), run_id=a["run_id"])
                return {"created": started.created, "status": started.run.status}
            if name == "run_append":
                appended = await runs.append(a["run_id"], a["frame_id"], a["type"], a.get("payload"))
                return {"duplicate": appended.duplicate, "seq": appended.seq}
            if name == "run_stream":
                seqs, types = [], []
                async for event in runs.stream(a["run_id"], cursor=int(a.get("cursor", 0)),
                                               follow=bool(a.get("follow", False))):
                    seqs.append(event.seq)
                    types.append(event.type)
                return {"count": len(seqs), "first_seq": seqs[0] if seqs else 0, "last_seq": seqs[-1] if seqs else 0,
                        "gap_free": seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True,
                        "last_type": types[-1] if types else ""}
            if name == "run_get":
                run = await runs.get(a["run_id"])
                return {"status": run.status, "last_seq": run.last_seq}
            if name == "run_wait_event":
                async for event in runs.stream(a["run_id"], cursor=0, follow=True):
                    if event.type == a["type"]:
                        return {"seq": event.seq, "payload": json.loads(event.payload_json or "null")}
                raise StepFailed(f"run {a['run_id']} ended without an event of type {a['type']!r}")
            if name in ("run_approve", "run_deny"):
                decide = runs.approve if name == "run_approve" else runs.deny
                decided = await decide(a["run_id"], a["tool_call_id"], a.get("note", ""))
                return {"duplicate": decided.duplicate, "seq": decided.seq}
        raise StepFailed(f"unknown op {name!r}")

    async def attach(self, a: dict[str, Any]) -> Any:
        behaviour = a.get("behaviour", "echo")
        seen: list[Any] = []
        release = asyncio.Event()
        relay = Relay()

        async def on_call(msg: Any, incoming: Incoming) -> Any:
            if behaviour == "collect" and msg == "seen":
                return seen
            if behaviour == "relay":
                return await relay.on_call(msg, incoming)
            return msg

        async def on_cast(msg: Any, incoming: Incoming) -> None:
            seen.append(msg)
            if behaviour == "block":
                await release.wait()

        agent = ExternalAgent(self.node(a)["meshd"], names=[a["name"]], groups=a.get("groups", []),
                              on_call=on_call, on_cast=on_cast, max_pending=int(a.get("max_pending", 0)))
        await agent.start(timeout=15.0)
        self.agents[a["name"]] = agent
        return {"node_id": agent.ref.node_id if agent.ref else ""}

    # ------------------------------------------------------------------ steps

    async def step(self, step: dict[str, Any], variables: dict[str, Any]) -> None:
        args = substitute(step.get("args") or {}, variables)
        resolved = {**step, "expect": substitute(step.get("expect"), variables),
                    "error": substitute(step.get("error"), variables)}
        deadline = time.monotonic() + float(step.get("eventually", 0))
        started = time.monotonic()
        while True:
            result, error = None, None
            try:
                result = await self.op(step["op"], args)
            except MabeamError as caught:
                error = caught
            try:
                check(resolved, result, error)
                break
            except StepFailed:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.1)
        if "within" in step and time.monotonic() - started > float(step["within"]):
            raise StepFailed(f"took {time.monotonic() - started:.2f}s, more than {step['within']}s")
        for var, path in (step.get("save") or {}).items():
            variables[var] = lookup_path(result, path)

    async def scenario(self, scenario: dict[str, Any]) -> None:
        variables: dict[str, Any] = {"run": f"{self.run_id}-{scenario['name']}", "lang": LANG}
        for index, step in enumerate(scenario["steps"], 1):
            try:
                await self.step(step, variables)
            except StepFailed as failure:
                raise StepFailed(f"step {index} ({step['op']}): {failure}") from None


async def run(args: argparse.Namespace, cluster: dict[str, Any], scenarios: list[dict[str, Any]]) -> int:
    passed = failed = 0
    for scenario in scenarios:
        if args.only and scenario["name"] not in args.only:
            continue
        runner = Runner(cluster, args.run)
        try:
            await asyncio.wait_for(runner.scenario(scenario), args.timeout)
            print(f"PASS {scenario['name']}", flush=True)
            passed += 1
        except (StepFailed, TimeoutError, MabeamError) as failure:
            print(f"FAIL {scenario['name']}: {str(failure) or type(failure).__name__}", flush=True)
            failed += 1
        finally:
            await runner.close()
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


async def serve(args: argparse.Namespace, cluster: dict[str, Any]) -> int:
    """Host a relay agent until stdin closes (the harness's relays for scenario 08)."""
    relay = Relay()
    agent = ExternalAgent(cluster["nodes"][args.node - 1]["meshd"], names=[args.name], on_call=relay.on_call)
    await agent.start(timeout=30.0)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await agent.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--cluster", required=True)
    r.add_argument("--scenarios", required=True)
    r.add_argument("--run", default=f"py{os.getpid()}")
    r.add_argument("--only", nargs="*")
    r.add_argument("--timeout", type=float, default=90.0)
    s = sub.add_parser("serve")
    s.add_argument("--cluster", required=True)
    s.add_argument("--node", type=int, default=1)
    s.add_argument("--name", required=True)
    args = parser.parse_args()
    cluster = json.loads(Path(args.cluster).read_text())
    if args.command == "serve":
        return asyncio.run(serve(args, cluster))
    scenarios = [yaml.safe_load(path.read_text()) for path in sorted(Path(args.scenarios).glob("*.yaml"))]
    return asyncio.run(run(args, cluster, scenarios))


if __name__ == "__main__":
    sys.exit(main())
