"""The rights table covers every method of every service in the contract, so no RPC ships undecided."""

from __future__ import annotations

from mabeam.security.rights import RIGHTS, required_role
from mabeam.security.tokens import Role
from mabeam.v1 import agent_pb2, coordinator_pb2, mesh_pb2, model_pb2, run_pb2

CONTRACT = (mesh_pb2, agent_pb2, model_pb2, run_pb2, coordinator_pb2)


def contract_methods() -> set[str]:
    return {f"/{service.full_name}/{method.name}"
            for module in CONTRACT for service in module.DESCRIPTOR.services_by_name.values()
            for method in service.methods}


def test_every_method_of_the_contract_has_a_role() -> None:
    missing = contract_methods() - set(RIGHTS)
    assert not missing, f"add these methods to mabeam/security/rights.py: {sorted(missing)}"
    stale = set(RIGHTS) - contract_methods()
    assert not stale, f"these methods are not in the contract any more: {sorted(stale)}"


def test_unknown_methods_need_admin() -> None:
    assert required_role("/mabeam.v1.MeshService/NotYetDecided") is Role.ADMIN


def test_writes_need_more_than_reader() -> None:
    for method, role in RIGHTS.items():
        name = method.rsplit("/", 1)[1]
        if name.startswith(("Create", "Spawn", "Stop", "Set", "Deposit", "Cancel", "Close")):
            assert role > Role.READER, method


def test_every_http_route_of_the_runs_face_stands_for_an_rpc() -> None:
    # The HTTP face is authorised through the RPC each route stands for: a new route needs its line in route_rpc.
    from starlette.routing import Route

    from agentd.runs.http import RunsHttp, route_rpc

    app = RunsHttp.__new__(RunsHttp)
    RunsHttp.__init__(app, manager=None)  # type: ignore[arg-type]  # routes only; nothing is served
    for route in app.app.routes:
        assert isinstance(route, Route)
        path = route.path.replace("{run_id}", "r1").replace("{tool_call_id}", "t1")
        for method in route.methods or ():
            if method == "HEAD":
                continue
            rpc = route_rpc(method, path)
            assert rpc in RIGHTS, f"{method} {route.path} stands for no RPC of the rights table"
