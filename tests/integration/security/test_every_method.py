"""Every method of every service, generated from the contract's descriptors, refuses what it must.

For each RPC (so a new one is covered without being listed here), against a secure two-node cluster:
no token, an expired token and a token with a wrong signature are UNAUTHENTICATED (TOKEN_MISSING,
TOKEN_EXPIRED, TOKEN_INVALID); a token whose roles are below the method's is PERMISSION_DENIED
(ROLE_REQUIRED); a request naming another tenant than the token's is PERMISSION_DENIED
(TENANT_FORBIDDEN). After each method's refusals, nothing changed: every etcd key of the cluster
(names, groups, instances, variables, ledger, quotas, usage, budgets, ...), and the agents and runs
of every tenant, are as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import message as pb_message
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from mabeam import keys
from mabeam.dev.cluster import DevCluster
from mabeam.etcd.client import EtcdClient
from mabeam.security.rights import required_role
from mabeam.security.tokens import Role, issue
from mabeam.v1 import agent_pb2, coordinator_pb2, mesh_pb2, model_pb2, run_pb2
from mabeam_client.agents import AgentClient
from mabeam_client.coordinator import CoordinatorClient
from mabeam_client.errors import translate
from mabeam_client.runs import RunClient
from mabeam_client.security import ClientSecurity, open_channel

#: Which daemon serves each service.
SERVED_BY = {"MeshService": "meshd", "AgentService": "agentd", "ModelService": "agentd", "RunService": "agentd",
             "CoordinatorService": "coordinator"}
TENANTS = ("default", "acme", "globex")
#: Keys that change by themselves (leases, elections, wake-ups, timers): not state a refused request could touch.
VOLATILE = ("members/", "election/", "runs/wake/", "runs/executors/")


def contract() -> list[tuple[ServiceDescriptor, MethodDescriptor]]:
    return [(service, method) for module in (mesh_pb2, agent_pb2, model_pb2, run_pb2, coordinator_pb2)
            for service in module.DESCRIPTOR.services_by_name.values() for method in service.methods]


def tenant_path(descriptor: Any, depth: int = 0) -> list[str] | None:
    """The path to a ``tenant`` string field of a request message (at most two levels down), or None."""
    for field in descriptor.fields:
        if field.name == "tenant" and field.type == FieldDescriptor.TYPE_STRING:
            return [field.name]
    if depth < 2:
        for field in descriptor.fields:
            repeated = bool(field.is_repeated)
            if field.type == FieldDescriptor.TYPE_MESSAGE and not repeated:
                sub = tenant_path(field.message_type, depth + 1)
                if sub is not None:
                    return [field.name, *sub]
    return None


def request_naming(method: MethodDescriptor, tenant: str) -> pb_message.Message:
    """A default request message of ``method`` with its tenant field (if any) set to ``tenant``."""
    request = GetMessageClass(method.input_type)()
    path = tenant_path(method.input_type)
    if path is not None:
        target = request
        for name in path[:-1]:
            target = getattr(target, name)
        setattr(target, path[-1], tenant)
    return request


async def refusal(channel: grpc.aio.Channel, service: ServiceDescriptor, method: MethodDescriptor,
                  request: pb_message.Message, send: bool = True) -> Any:
    """Call ``method`` with ``request``; the translated error it must answer with.

    ``send=False`` opens a client stream without writing ``request``: a refusal decided on the call's
    metadata alone (token, role) then never races the client's first write. (Writing it anyway, the
    server's early status and the client's write occasionally crossed on a loaded machine and surfaced
    as gRPC's "INTERNAL: Internal error from Core" instead of the status sent.)
    """
    path = f"/{service.full_name}/{method.name}"
    serialize = type(request).SerializeToString
    deserialize = GetMessageClass(method.output_type).FromString

    answered = asyncio.Event()

    async def one() -> AsyncIterator[pb_message.Message]:
        if send:
            yield request
        # Half-close only once answered: a refusal racing the client's half-close can surface as gRPC's
        # "INTERNAL: Internal error from Core" (STACK-NOTES) instead of the status the server sent.
        await answered.wait()

    try:
        if method.client_streaming and method.server_streaming:
            call = channel.stream_stream(path, serialize, deserialize)(one(), timeout=15)
            async for _ in call:
                break
        elif method.server_streaming:
            call = channel.unary_stream(path, serialize, deserialize)(request, timeout=15)
            async for _ in call:
                break
        elif method.client_streaming:
            await channel.stream_unary(path, serialize, deserialize)(one(), timeout=15)
        else:
            await channel.unary_unary(path, serialize, deserialize)(request, timeout=15)
    except grpc.aio.AioRpcError as error:
        return translate(error)
    finally:
        answered.set()
    raise AssertionError(f"{path} answered a request it must refuse")


async def snapshot(cluster: DevCluster, coordinator: str) -> dict[str, Any]:
    """Everything a refused request could have changed: etcd state, agents and runs of every tenant."""
    assert cluster.security is not None
    etcd = EtcdClient([cluster.etcd_endpoint])
    try:
        kvs, _ = await etcd.get_prefix(keys.root(cluster.cluster))
    finally:
        await etcd.close()
    root = len(keys.root(cluster.cluster))
    state: dict[str, Any] = {"etcd": {kv.key[root:].decode(): kv.value for kv in kvs
                                      if not kv.key[root:].decode().startswith(VOLATILE)}}
    admin = cluster.security.client()
    for node in cluster.nodes:
        assert node.agentd is not None
        async with AgentClient(node.agentd.endpoint, security=admin) as agents:
            for tenant in TENANTS:
                found = await agents.list(tenant=tenant)
                state[f"agents/{node.node_id}/{tenant}"] = sorted(a.agent_id for a in found)
    async with RunClient([n.agentd.endpoint for n in cluster.nodes if n.agentd], security=admin) as runs:
        for tenant in TENANTS:
            found, _ = await runs.list(tenant=tenant)
            state[f"runs/{tenant}"] = sorted((r.run_id, r.status) for r in found)
    return state


@pytest.fixture(scope="module")
def leader(secure_cluster: DevCluster) -> str:
    """The active coordinator's endpoint (standbys answer WRONG_NODE before anything else)."""
    assert secure_cluster.security is not None

    async def find() -> str:
        endpoints = [n.coordinator.endpoint for n in secure_cluster.nodes if n.coordinator]
        async with CoordinatorClient(endpoints, security=secure_cluster.security.client()) as client:
            info = await client.leader()
        return next(e for e in endpoints if e.endswith(":" + info.leader_address.rsplit(":", 1)[1]))

    return asyncio.run(find())


def endpoint_of(cluster: DevCluster, leader: str, service: str) -> str:
    node = cluster.nodes[0]
    daemon = SERVED_BY[service]
    if daemon == "meshd":
        return node.endpoint
    if daemon == "agentd":
        assert node.agentd is not None
        return node.agentd.endpoint
    return leader


@pytest.mark.parametrize(("service", "method"), contract(), ids=lambda v: getattr(v, "name", str(v)))
async def test_refusals(secure_cluster: DevCluster, leader: str, service: ServiceDescriptor,
                        method: MethodDescriptor) -> None:
    security = secure_cluster.security
    assert security is not None
    cert, key = security.certs["client"]
    tls = {"tls_ca": str(security.ca), "tls_cert": str(cert), "tls_key": str(key)}
    needed = required_role(f"/{service.full_name}/{method.name}")
    endpoint = endpoint_of(secure_cluster, leader, service.name)
    before = await snapshot(secure_cluster, leader)

    async def expect(token: str, request: pb_message.Message, code: str, reason: str) -> None:
        channel = open_channel(endpoint, ClientSecurity(token=token, **tls))
        try:
            # A client stream refused on its metadata needs no message (see refusal); a tenant check reads one.
            error = await refusal(channel, service, method, request, send=reason == "TENANT_FORBIDDEN")
        finally:
            await channel.close()
        assert (type(error).__name__, error.reason) == (code, reason), f"{method.full_name}: {error}"

    plain = request_naming(method, "")
    await expect("", plain, "Unauthenticated", "TOKEN_MISSING")
    expired = security.token("acme", [needed], ttl_s=60, now=time.time() - 3600)
    await expect(expired, plain, "Unauthenticated", "TOKEN_EXPIRED")
    forged = issue(Ed25519PrivateKey.generate(), "dev", cluster=secure_cluster.cluster, tenant="acme",
                   roles=["admin"], subject="mallory", ttl_s=600)
    await expect(forged, plain, "Unauthenticated", "TOKEN_INVALID")
    if needed > Role.READER:
        await expect(security.token("acme", [Role(needed - 1)]), plain, "PermissionDenied", "ROLE_REQUIRED")
    if needed < Role.ADMIN and tenant_path(method.input_type) is not None:
        await expect(security.token("globex", [needed]), request_naming(method, "acme"), "PermissionDenied",
                     "TENANT_FORBIDDEN")
    assert await snapshot(secure_cluster, leader) == before
