"""The gRPC AgentService over a :class:`~agentd.workers.WorkerPool`.

Every method acts in one tenant: the token's, or for an admin the request's ``tenant``
(:func:`mabeam.security.context.tenant_for`); the pool only ever finds that tenant's agents, so
another tenant's agent answers NOT_FOUND like one that does not exist.

Methods validate and raise :class:`~agentd.errors.AgentError` (a
:class:`~mabeam.errors.ServiceError`); the daemon's
:class:`~mabeam.grpcutil.ErrorInterceptor` answers each with its status code,
ErrorReason and message.
"""

from __future__ import annotations

import json
import math
from typing import Any

import grpc
from pydantic import ValidationError

from agentd.errors import InvalidArgument
from agentd.quotas import AgentQuota
from agentd.supervision import ChildSpec, StartSpec
from agentd.workers import WorkerPool
from mabeam.security.context import tenant_for
from mabeam.security.quota import quota_exceeded
from mabeam.v1 import agent_pb2, agent_pb2_grpc

#: Largest JSON argument or message accepted over gRPC.
MAX_JSON = 4 * 1024 * 1024
#: Longest call timeout accepted (seconds): a call is a request/reply, not a wait for days.
MAX_CALL_TIMEOUT = 3600.0


def _json(text: str, field: str, default: Any) -> Any:
    if not text:
        return default
    if len(text) > MAX_JSON:
        raise InvalidArgument(f"{field}: larger than {MAX_JSON} bytes")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{field}: not valid JSON ({exc})") from None


def _info(data: dict[str, Any]) -> agent_pb2.AgentInfo:
    return agent_pb2.AgentInfo(
        agent_id=data["agent_id"], name=data.get("name") or "", type=data["type"], status=data["status"],
        supervisor=data.get("supervisor") or "", restarts=data["restarts"], last_error=data["last_error"],
        mailbox_depth=data["mailbox_depth"], mailbox_capacity=data["mailbox_capacity"], handled=data["handled"],
        memory_bytes=data["memory_bytes"], checkpoint_version=data["checkpoint_version"],
        is_supervisor=data["is_supervisor"], worker=data.get("worker", ""), tenant=data.get("tenant", ""))


def _node(data: dict[str, Any]) -> agent_pb2.TreeNode:
    return agent_pb2.TreeNode(agent_id=data["agent_id"], name=data.get("name") or "", type=data["type"],
                              status=data["status"], restarts=data["restarts"], strategy=data.get("strategy", ""),
                              worker=data.get("worker", ""), tenant=data.get("tenant", ""),
                              children=[_node(c) for c in data.get("children", [])])


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    """SpawnAgent, StopAgent, GetAgent, ListAgents, SupervisionTree, Cast, Call, CastGroup, GroupMembers."""

    def __init__(self, pool: WorkerPool, quota: AgentQuota | None = None) -> None:
        self.pool = pool
        #: The ``max_agents`` quota (agentd.quotas; None without etcd: no quotas).
        self.quota = quota

    async def SpawnAgent(self, request: agent_pb2.SpawnAgentRequest,  # noqa: N802
                         context: grpc.aio.ServicerContext) -> agent_pb2.SpawnAgentResponse:
        """Start an agent of an allow-listed type."""
        tenant = tenant_for(request.tenant)
        if not request.type:
            raise InvalidArgument("type: required")
        args = _json(request.args_json, "args_json", {})
        if not isinstance(args, dict):
            raise InvalidArgument("args_json: must be a JSON object")
        shutdown: float | str = "brutal_kill" if request.brutal_kill else (request.shutdown_seconds or 5.0)
        try:
            fields = {"id": request.child_id or request.name or f"{request.type}-{self.pool.next_serial()}",
                      "start": StartSpec(type=request.type, args=args), "name": request.name or None,
                      "restart": request.restart or "temporary", "shutdown": shutdown,
                      "isolation": request.isolation or "shared"}
            fields.update(await self._mailbox(tenant, request.mailbox_capacity, spec_id=str(fields["id"])))
            spec = ChildSpec.model_validate(fields)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise InvalidArgument(f"invalid spawn request: {problems}") from None
        self.pool.check_type(request.type)
        if self.quota is None:
            agent_id = await self.pool.spawn(spec, request.supervisor or None, tenant)
        else:  # a unit of the tenant's max_agents first: over the limit, nothing starts
            holder = await self.quota.acquire(tenant, f"starting agent {spec.id!r} ({request.type})")
            try:
                agent_id = await self.pool.spawn(spec, request.supervisor or None, tenant)
            except BaseException:
                await self.quota.release(holder)
                raise
            self.quota.bind(holder, tenant, agent_id)
        return agent_pb2.SpawnAgentResponse(agent=_info(await self.pool.info(agent_id, tenant)))

    async def _mailbox(self, tenant: str, asked: int, spec_id: str) -> dict[str, int]:
        """The ChildSpec's mailbox fields for a spawn asking ``asked`` (0: the default) under the tenant's
        ``max_mailbox``: asking more is QUOTA_EXCEEDED (nothing starts); a default is lowered to the bound."""
        if asked < 0:
            raise InvalidArgument("mailbox_capacity: must be >= 0 (0: the default)")
        bound = int((await self.quota.quota(tenant)).max_mailbox) if self.quota is not None else 0
        if bound and asked > bound:
            raise quota_exceeded(tenant, "max_mailbox", bound, asked,
                                 f"starting agent {spec_id!r} with a mailbox of {asked} messages")
        fields = {"mailbox_capacity": asked} if asked else {}
        return {**fields, "mailbox_bound": bound} if bound else fields

    async def StopAgent(self, request: agent_pb2.StopAgentRequest,  # noqa: N802
                        context: grpc.aio.ServicerContext) -> agent_pb2.StopAgentResponse:
        """Stop an agent for good."""
        await self.pool.stop_agent(request.agent, tenant_for(request.tenant))
        return agent_pb2.StopAgentResponse()

    async def GetAgent(self, request: agent_pb2.GetAgentRequest,  # noqa: N802
                       context: grpc.aio.ServicerContext) -> agent_pb2.GetAgentResponse:
        """One agent's snapshot."""
        return agent_pb2.GetAgentResponse(agent=_info(await self.pool.info(request.agent, tenant_for(request.tenant))))

    async def ListAgents(self, request: agent_pb2.ListAgentsRequest,  # noqa: N802
                         context: grpc.aio.ServicerContext) -> agent_pb2.ListAgentsResponse:
        """Every agent, optionally of one type."""
        agents = await self.pool.list_agents(tenant_for(request.tenant))
        return agent_pb2.ListAgentsResponse(
            agents=[_info(a) for a in agents if not request.type or a["type"] == request.type])

    async def SupervisionTree(self, request: agent_pb2.SupervisionTreeRequest,  # noqa: N802
                              context: grpc.aio.ServicerContext) -> agent_pb2.SupervisionTreeResponse:
        """The trees (one per worker) or one subtree."""
        trees = await self.pool.tree(request.root or None, tenant_for(request.tenant))
        return agent_pb2.SupervisionTreeResponse(roots=[_node(t) for t in trees])

    async def Cast(self, request: agent_pb2.AgentCastRequest,  # noqa: N802
                   context: grpc.aio.ServicerContext) -> agent_pb2.AgentCastResponse:
        """Enqueue a message (RESOURCE_EXHAUSTED when the mailbox is full)."""
        tenant = tenant_for(request.tenant)
        await self.pool.cast(request.agent, _json(request.message_json, "message_json", None), tenant)
        return agent_pb2.AgentCastResponse()

    async def Call(self, request: agent_pb2.AgentCallRequest,  # noqa: N802
                   context: grpc.aio.ServicerContext) -> agent_pb2.AgentCallResponse:
        """Call an agent; the reply as JSON."""
        tenant = tenant_for(request.tenant)
        timeout = request.timeout_seconds or 5.0
        # A NaN, negative or absurd timeout once wedged agentd's loop (found by tests/fuzz): refuse it here.
        if not math.isfinite(timeout) or not 0 < timeout <= MAX_CALL_TIMEOUT:
            raise InvalidArgument(f"timeout_seconds: must be above 0 and at most {MAX_CALL_TIMEOUT:g}, got {timeout!r}")
        msg = _json(request.message_json, "message_json", None)
        reply = await self.pool.call(request.agent, msg, timeout=timeout, tenant=tenant)
        return agent_pb2.AgentCallResponse(reply_json=json.dumps(reply))

    async def CastGroup(self, request: agent_pb2.AgentCastGroupRequest,  # noqa: N802
                        context: grpc.aio.ServicerContext) -> agent_pb2.AgentCastGroupResponse:
        """Cast to a process group (all members cluster-wide, or one in turn)."""
        tenant = tenant_for(request.tenant)
        if not request.group:
            raise InvalidArgument("group: required")
        msg = _json(request.message_json, "message_json", None)
        delivered = self.pool.send_group(request.group, msg, request.mode or "all", tenant=tenant)
        return agent_pb2.AgentCastGroupResponse(local_deliveries=delivered)

    async def GroupMembers(self, request: agent_pb2.AgentGroupMembersRequest,  # noqa: N802
                           context: grpc.aio.ServicerContext) -> agent_pb2.AgentGroupMembersResponse:
        """This agentd's members of a group."""
        tenant = tenant_for(request.tenant)
        return agent_pb2.AgentGroupMembersResponse(agent_ids=self.pool.group_members(request.group, tenant))
