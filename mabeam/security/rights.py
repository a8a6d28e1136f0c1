"""Who may call what: the least role each gRPC method of the contract needs, in one table.

The table is keyed by full method name (``/mabeam.v1.<Service>/<Method>``), the
form gRPC interceptors see. ``tests/unit/security/test_rights.py`` checks that every
method of every service in the generated descriptors has an entry, so a new RPC
cannot ship without a decision here; a method missing at run time needs ``admin``
(fail closed). Roles are ordered (:class:`~mabeam.security.tokens.Role`): a token
whose highest role is at least the method's role may call it — within its own
tenant; reaching another tenant takes ``admin`` whatever the method
(:func:`mabeam.security.context.tenant_for`).

The runs HTTP face uses the same table through the RPC each route stands for.
"""

from __future__ import annotations

from mabeam.security.tokens import Role

READER, AGENT, OPERATOR, ADMIN = Role.READER, Role.AGENT, Role.OPERATOR, Role.ADMIN

_BY_SERVICE: dict[str, dict[str, Role]] = {
    "MeshService": {
        # Cluster topology (members, leaders) and the tenant's own registry are readable.
        "Ping": READER, "ListMembers": READER, "WatchMembers": READER, "GetLeader": READER,
        "WatchLeader": READER, "Lookup": READER, "ListNames": READER, "GroupMembers": READER,
        "ListGroups": READER, "GetTenantUsage": READER,
        # What an agent does: take names, join groups, send and receive on the data plane.
        "RegisterName": AGENT, "UnregisterName": AGENT, "JoinGroup": AGENT, "LeaveGroup": AGENT,
        "Send": AGENT, "Call": AGENT, "Subscribe": AGENT, "AttachAgent": AGENT,
        # Quotas bound tenants against each other: only an admin sets them.
        "SetTenantQuota": ADMIN,
    },
    "AgentService": {
        "GetAgent": READER, "ListAgents": READER, "SupervisionTree": READER, "GroupMembers": READER,
        "Cast": AGENT, "Call": AGENT, "CastGroup": AGENT,
        "SpawnAgent": OPERATOR, "StopAgent": OPERATOR,
    },
    "ModelService": {
        "ListModels": READER,
        # Model calls spend the tenant's budget: agents make them.
        "Complete": AGENT, "StreamComplete": AGENT,
    },
    "RunService": {
        "GetRun": READER, "ListRuns": READER, "StreamRun": READER,
        "AppendFrame": AGENT,
        "StartRun": OPERATOR, "CancelRun": OPERATOR,
        # A tool call gated for a human: deciding it is the tenant's operator's call, not an agent's.
        "ApproveToolCall": OPERATOR, "DenyToolCall": OPERATOR,
    },
    "CoordinatorService": {
        "GetCoordinatorLeader": READER, "ListMechanisms": READER,
        "GetAuction": READER, "ListAuctions": READER, "WatchAuction": READER, "GetNegotiation": READER,
        "GetVote": READER, "GetMarket": READER, "GetBook": READER, "WatchTrades": READER,
        "GetVariable": READER, "ListVariables": READER, "WatchVariable": READER, "VariableHistory": READER,
        "GetBalance": READER, "ListBalances": READER,
        # Taking part in a mechanism, moving the tenant's own credit, setting a variable's value.
        "SubmitBid": AGENT, "SubmitBids": AGENT, "Negotiate": AGENT, "CastVote": AGENT, "PlaceOrder": AGENT,
        "CancelOrder": AGENT, "SetVariable": AGENT, "Transfer": AGENT,
        # Creating and ending instances and variables, and minting credit, manage the tenant.
        "CreateAuction": OPERATOR, "CancelAuction": OPERATOR, "CreateNegotiation": OPERATOR,
        "CreateVote": OPERATOR, "CreateMarket": OPERATOR, "CloseInstance": OPERATOR,
        "CreateVariable": OPERATOR, "Deposit": OPERATOR,
    },
}

#: Full method name -> the least role that may call it.
RIGHTS: dict[str, Role] = {
    f"/mabeam.v1.{service}/{method}": role
    for service, methods in _BY_SERVICE.items() for method, role in methods.items()
}


def required_role(method: str) -> Role:
    """The least role for a full method name; ``admin`` for one the table does not know (fail closed)."""
    return RIGHTS.get(method, ADMIN)
