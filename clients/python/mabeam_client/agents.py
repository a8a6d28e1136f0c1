"""Client for AgentService: spawn, stop, inspect and message the agents of one agentd.

``AgentClient`` is async; ``SyncAgentClient`` is the same API, blocking::

    async with AgentClient("127.0.0.1:7300") as agents:
        info = await agents.spawn("counter", {"start": 1}, name="c1", restart="permanent")
        await agents.cast("c1", 5)
        assert await agents.call("c1", "get") == 6

Messages, arguments and replies are JSON values; agents come back as
:class:`~mabeam_client.types.AgentInfo` and trees as
:class:`~mabeam_client.types.TreeNode`. Errors raise the
:mod:`mabeam_client.errors` tree: ``InvalidArgument`` (unknown type, bad args),
``NotFound``, ``AlreadyExists``, ``ResourceExhausted`` (mailbox full),
``DeadlineExceeded``, ``Aborted`` (the agent exited before replying).
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from mabeam.v1 import agent_pb2, agent_pb2_grpc
from mabeam_client.errors import translate
from mabeam_client.security import ClientSecurity, open_channel
from mabeam_client.sync import SyncFace
from mabeam_client.types import AgentInfo, TreeNode

T = TypeVar("T")


class AgentClient:
    """Async AgentService client on one gRPC channel to one agentd (``host:port``)."""

    def __init__(self, endpoint: str, timeout: float = 30.0, security: ClientSecurity | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._channel = open_channel(endpoint, security)
        self._stub = agent_pb2_grpc.AgentServiceStub(self._channel)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: Callable[..., Awaitable[T]], request: Any, timeout: float | None = None) -> T:
        try:
            return await method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as error:
            raise translate(error) from None

    async def spawn(self, agent_type: str, args: dict[str, Any] | None = None, *, name: str = "",
                    supervisor: str = "", isolation: str = "shared", restart: str = "temporary",
                    child_id: str = "", shutdown_seconds: float = 0.0,
                    brutal_kill: bool = False, tenant: str = "", mailbox_capacity: int = 0) -> AgentInfo:
        """Start an agent of an allow-listed type; returns its info.

        Every method acts in the token's tenant; ``tenant`` names another (admin tokens only).
        ``mailbox_capacity`` (0: the default) over the tenant's ``max_mailbox`` quota is refused
        (ResourceExhausted, reason QUOTA_EXCEEDED); the default is lowered to that quota.
        """
        request = agent_pb2.SpawnAgentRequest(
            type=agent_type, args_json=json.dumps(args or {}), name=name, supervisor=supervisor,
            isolation=isolation, restart=restart, child_id=child_id, shutdown_seconds=shutdown_seconds,
            brutal_kill=brutal_kill, tenant=tenant, mailbox_capacity=mailbox_capacity)
        response = await self._call(self._stub.SpawnAgent, request)
        return AgentInfo.from_proto(response.agent)

    async def stop(self, agent: str, tenant: str = "") -> None:
        """Stop an agent (id or name) for good."""
        await self._call(self._stub.StopAgent, agent_pb2.StopAgentRequest(agent=agent, tenant=tenant))

    async def get(self, agent: str, tenant: str = "") -> AgentInfo:
        """One agent's info."""
        request = agent_pb2.GetAgentRequest(agent=agent, tenant=tenant)
        return AgentInfo.from_proto((await self._call(self._stub.GetAgent, request)).agent)

    async def list(self, agent_type: str = "", tenant: str = "") -> list[AgentInfo]:
        """Every agent of the tenant (optionally of one type)."""
        response = await self._call(self._stub.ListAgents, agent_pb2.ListAgentsRequest(type=agent_type, tenant=tenant))
        return [AgentInfo.from_proto(info) for info in response.agents]

    async def tree(self, root: str = "", tenant: str = "") -> builtins.list[TreeNode]:
        """The tenant's supervision trees (one per worker) or the subtree under ``root``."""
        response = await self._call(self._stub.SupervisionTree,
                                    agent_pb2.SupervisionTreeRequest(root=root, tenant=tenant))
        return [TreeNode.from_proto(node) for node in response.roots]

    async def cast(self, agent: str, message: Any, tenant: str = "") -> None:
        """Enqueue a JSON message (ResourceExhausted when the mailbox is full)."""
        await self._call(self._stub.Cast, agent_pb2.AgentCastRequest(agent=agent, message_json=json.dumps(message),
                                                                     tenant=tenant))

    async def call(self, agent: str, message: Any, timeout: float = 5.0, tenant: str = "") -> Any:
        """Call an agent with a JSON message; its JSON reply."""
        request = agent_pb2.AgentCallRequest(agent=agent, message_json=json.dumps(message), timeout_seconds=timeout,
                                             tenant=tenant)
        response = await self._call(self._stub.Call, request, timeout=timeout + 5.0)
        return json.loads(response.reply_json) if response.reply_json else None

    async def cast_group(self, group: str, message: Any, mode: str = "all", tenant: str = "") -> int:
        """Cast a JSON message to a process group: every member cluster-wide ("all") or one in
        round-robin turn ("one"); returns how many members of this agentd it was handed to."""
        request = agent_pb2.AgentCastGroupRequest(group=group, message_json=json.dumps(message), mode=mode,
                                                  tenant=tenant)
        return int((await self._call(self._stub.CastGroup, request)).local_deliveries)

    async def group_members(self, group: str, tenant: str = "") -> builtins.list[str]:
        """This agentd's members of a process group (agent ids); meshd lists the nodes."""
        response = await self._call(self._stub.GroupMembers,
                                    agent_pb2.AgentGroupMembersRequest(group=group, tenant=tenant))
        return list(response.agent_ids)


class SyncAgentClient(SyncFace):
    """The same API as :class:`AgentClient`, blocking."""

    def __init__(self, endpoint: str, timeout: float = 30.0, security: ClientSecurity | None = None) -> None:
        super().__init__(lambda: AgentClient(endpoint, timeout, security))
