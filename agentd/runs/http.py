"""The HTTP face of durable runs: REST for browsers and curl, the log as Server-Sent Events.

Routes (JSON bodies; every error is ``{"error": {"code", "reason", "message", "field_violations", "metadata"}}``):

====================================  ===========================================================
``POST /v1/runs``                     start: 201 new, 200 the same run again, 409 RUN_CONFLICT
``GET  /v1/runs``                     list (``tenant``, ``agent_type``, ``status``, ``page_size``, ``page_token``)
``GET  /v1/runs/{run_id}``            the snapshot; 404 RUN_NOT_FOUND
``POST /v1/runs/{run_id}/frames``     append a frame: 202 accepted, 200 a replay, 409 FRAME_CONFLICT
``POST /v1/runs/{run_id}/cancel``     202 requested, 200 a replay
``POST /v1/runs/{run_id}/tool-calls/{tool_call_id}/approve``  (and ``/deny``; body ``{"note"}`` optional):
                                      202 recorded, 200 a replay, 404 APPROVAL_NOT_FOUND, 409
                                      APPROVAL_DECIDED / APPROVAL_EXPIRED
``GET  /v1/runs/{run_id}/stream``     ``text/event-stream``; ``id:`` is the seq; resume with ``Last-Event-ID``
                                      or ``?cursor=`` (both and different: 400); ``?follow=false`` stops
                                      when caught up; 410 STALE_CURSOR with ``retention_floor``; a run
                                      that has ended closes with ``data: [DONE]``
====================================  ===========================================================

Bad JSON, a body over ``max_body_bytes``, unknown or mistyped fields: 400 naming the problem.

With security on (``[security]`` token keys, docs/security.md) every route needs ``Authorization: Bearer
<token>`` and the role of the RPC it stands for (:class:`mabeam.security.asgi.AuthMiddleware`: 401/403 with
the same reasons as gRPC), acts in the token's tenant, and serves over TLS with client certificates when the
daemon's gRPC does.

Why Starlette + uvicorn + sse-starlette: Starlette is a small ASGI toolkit (routing, requests,
responses) that runs on agentd's own event loop beside gRPC, uvicorn is its well-kept
server, and sse-starlette handles the parts of SSE that are easy to get wrong by hand
(keep-alive pings through proxies, noticing a client that went away, send timeouts).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agentd.runs.manager import RunManager, RunView
from agentd.runs.model import EventRow, InvalidRunRequest, RunError, RunsUnavailable, canonical_json
from agentd.runs.upcasters import upcast
from mabeam.errors import ServiceError
from mabeam.etcd.client import EtcdError
from mabeam.security.asgi import AuthMiddleware, error_body, http_status
from mabeam.security.audit import AUDITED_REASONS
from mabeam.security.context import current
from mabeam.security.server import ServerSecurity, check_bind

log = logging.getLogger(__name__)

RUN_SERVICE = "/mabeam.v1.RunService/"


def route_rpc(method: str, path: str) -> str | None:
    """The RunService method an HTTP request stands for (its rights are that method's), None for other paths."""
    parts = path.strip("/").split("/")
    if parts[:2] != ["v1", "runs"]:
        return None
    rpc = {(2, "POST"): "StartRun", (2, "GET"): "ListRuns", (3, "GET"): "GetRun"}.get((len(parts), method))
    if len(parts) == 4:
        rpc = {("frames", "POST"): "AppendFrame", ("cancel", "POST"): "CancelRun",
               ("stream", "GET"): "StreamRun"}.get((parts[3], method))
    if len(parts) == 6 and parts[3] == "tool-calls" and method == "POST":
        rpc = {"approve": "ApproveToolCall", "deny": "DenyToolCall"}.get(parts[5])
    return RUN_SERVICE + rpc if rpc else None


class StartBody(BaseModel):
    """POST /v1/runs."""

    model_config = ConfigDict(extra="forbid", strict=True)
    run_id: str = ""
    tenant: str = ""
    agent_type: str
    input: Any = None
    input_policy: str = ""
    labels: dict[str, str] = Field(default_factory=dict)


class FrameBody(BaseModel):
    """POST /v1/runs/{run_id}/frames."""

    model_config = ConfigDict(extra="forbid", strict=True)
    frame_id: str
    type: str
    payload: Any = None


class DecisionBody(BaseModel):
    """POST /v1/runs/{run_id}/tool-calls/{tool_call_id}/approve|deny (the body is optional)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    note: str = ""


class CancelBody(BaseModel):
    """POST /v1/runs/{run_id}/cancel (the body is optional)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    reason: str = ""


def error_response(error: RunError) -> JSONResponse:
    """The one place a durable-runs error becomes an HTTP answer."""
    body: dict[str, Any] = {"code": error.code, "reason": error.reason, "message": error.message}
    if isinstance(error, InvalidRunRequest):
        body["field_violations"] = error.violations
    if error.metadata:
        body["metadata"] = error.metadata
        if "retention_floor" in error.metadata:
            body["retention_floor"] = int(error.metadata["retention_floor"])
    headers = {"Retry-After": "1"} if isinstance(error, RunsUnavailable) else None
    return JSONResponse({"error": body}, status_code=error.http_status, headers=headers)


def run_json(view: RunView) -> dict[str, Any]:
    """A run snapshot as JSON (the fields of the contract's Run message)."""
    row = view.row
    return {"run_id": row.run_id, "tenant": row.tenant, "agent_type": row.agent_type, "status": row.status,
            "input_policy": row.input_policy, "last_seq": row.last_seq, "retention_floor": row.retention_floor,
            "executor": {"node_id": row.executor_node, "agent": row.agent_type if row.executor_node else "",
                         "lease_id": row.executor_lease, "fencing_token": row.executor_token, "live": view.live},
            "frames_pending": row.frames_pending,
            "counters": {"frames": row.frames, "steps": row.steps, "recoveries": row.recoveries,
                         "checkpoints": row.checkpoints, "emitted": row.emitted},
            "cancel_requested": row.cancel_requested, "error_class": row.error_class,
            "error_message": row.error_message, "created_unix_ms": row.created_ms,
            "updated_unix_ms": row.updated_ms, "labels": row.labels_dict(),
            "output": json.loads(row.output) if row.output else None}


def event_json(event: EventRow) -> dict[str, Any]:
    """An event as an SSE data object (payload upcast to its type's current version)."""
    payload = event.payload_value()
    version = event.version
    if event.payload is not None:
        version, payload = upcast(event.type, version, payload)
    return {"run_id": event.run_id, "seq": event.seq, "type": event.type, "version": version,
            "time_unix_ms": event.time_ms, "payload": payload, "payload_sha256": event.payload_sha256,
            "hash": event.hash, "prev_hash": event.prev_hash, "pruned": event.payload is None}


def _violations(error: ValidationError) -> dict[str, str]:
    out = {}
    for problem in error.errors():
        where = ".".join(str(p) for p in problem["loc"]) or "(body)"
        message = "unknown field" if problem["type"] == "extra_forbidden" else problem["msg"]
        out[where] = message
    return out


class RunsHttp:
    """The Starlette app over a :class:`RunManager` (``app``), and its uvicorn server bound to a given address."""

    def __init__(self, manager: RunManager, max_body_bytes: int = 2 * 1024 * 1024,
                 security: ServerSecurity | None = None) -> None:
        self.manager = manager
        self.max_body_bytes = max_body_bytes
        self.security = security
        self.app = Starlette(routes=[
            Route("/v1/runs", self.start, methods=["POST"]),
            Route("/v1/runs", self.list, methods=["GET"]),
            Route("/v1/runs/{run_id}", self.get, methods=["GET"]),
            Route("/v1/runs/{run_id}/frames", self.frame, methods=["POST"]),
            Route("/v1/runs/{run_id}/cancel", self.cancel, methods=["POST"]),
            Route("/v1/runs/{run_id}/tool-calls/{tool_call_id}/approve", self.approve, methods=["POST"]),
            Route("/v1/runs/{run_id}/tool-calls/{tool_call_id}/deny", self.deny, methods=["POST"]),
            Route("/v1/runs/{run_id}/stream", self.stream, methods=["GET"]),
        ], exception_handlers={RunError: self._run_error, EtcdError: self._etcd_error,
                               ServiceError: self._service_error, HTTPException: self._http_error,
                               Exception: self._internal_error})
        #: What a 404 / 405 lists: every route this app serves.
        self.routes = ", ".join(f"{method} {route.path}" for route in self.app.routes if isinstance(route, Route)
                                for method in sorted((route.methods or set()) - {"HEAD"}))
        self.asgi: Any = self.app
        if security is not None and security.verifier is not None:
            self.asgi = AuthMiddleware(self.app, security.verifier, security.audit, route_rpc)
        self._server: _Server | None = None
        self.port = 0

    async def _run_error(self, request: Request, error: Exception) -> Response:
        assert isinstance(error, RunError)
        return error_response(error)

    async def _http_error(self, request: Request, error: Exception) -> Response:
        """Starlette's own refusals (no such path, a method the path does not take) in the contract's shape."""
        assert isinstance(error, HTTPException)
        if error.status_code in (404, 405):
            what = "path" if error.status_code == 404 else "method for this path"
            body = {"code": "NOT_FOUND" if error.status_code == 404 else "UNIMPLEMENTED", "reason": "UNKNOWN_ROUTE",
                    "message": f"{request.method} {request.url.path[:200]}: no such {what}; this server serves "
                               f"{self.routes}"}
        else:
            body = {"code": "INVALID_ARGUMENT", "reason": "MALFORMED_REQUEST", "message": str(error.detail)}
        return JSONResponse({"error": body}, status_code=error.status_code, headers=error.headers)

    async def _internal_error(self, request: Request, error: Exception) -> Response:
        """Anything unexpected: a generic answer (the cause goes to the log, never to the client)."""
        log.error("unexpected error in %s %s", request.method, request.url.path, exc_info=error)
        return JSONResponse({"error": {"code": "INTERNAL", "reason": "INTERNAL_ERROR",
                                       "message": "internal error; the server logged the cause"}}, status_code=500)

    async def _etcd_error(self, request: Request, error: Exception) -> Response:
        return error_response(RunsUnavailable(f"etcd: {error}"))

    async def _service_error(self, request: Request, error: Exception) -> Response:
        """A refusal raised under the API (another tenant named, a quota): audited, answered with its status."""
        assert isinstance(error, ServiceError)
        call = current()
        if call is not None and error.reason in AUDITED_REASONS:
            call.audit.refuse(call.method, error.reason, call.principal, call.peer, error.message)
        return JSONResponse(error_body(error), status_code=http_status(error))

    async def _body(self, request: Request, model: type[BaseModel], optional: bool = False) -> Any:
        size = 0
        chunks = []
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise InvalidRunRequest({"(body)": f"is larger than the limit of {self.max_body_bytes} bytes"})
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip() and optional:
            raw = b"{}"
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InvalidRunRequest({"(body)": f"is not valid JSON ({error})"}) from None
        if not isinstance(data, dict):
            raise InvalidRunRequest({"(body)": "must be a JSON object"})
        try:
            return model.model_validate(data)
        except ValidationError as error:
            raise InvalidRunRequest(_violations(error)) from None

    # --- routes ---------------------------------------------------------------------------------------

    async def start(self, request: Request) -> Response:
        """POST /v1/runs."""
        body: StartBody = await self._body(request, StartBody)
        input_json = canonical_json(body.input) if "input" in body.model_fields_set else ""
        view, created = await self.manager.start_run(body.run_id, body.tenant, body.agent_type, input_json,
                                                     body.input_policy, body.labels)
        return JSONResponse(run_json(view), status_code=201 if created else 200)

    async def list(self, request: Request) -> Response:
        """GET /v1/runs."""
        query = request.query_params
        size = query.get("page_size", "0")
        if not size.isdigit():
            raise InvalidRunRequest({"page_size": f"{size[:32]!r} is not a number"})
        views, token = await self.manager.list(query.get("tenant", ""), query.get("agent_type", ""),
                                               query.get("status", ""), int(size), query.get("page_token", ""))
        return JSONResponse({"runs": [run_json(v) for v in views], "next_page_token": token})

    async def get(self, request: Request) -> Response:
        """GET /v1/runs/{run_id}."""
        return JSONResponse(run_json(await self.manager.get(request.path_params["run_id"])))

    async def frame(self, request: Request) -> Response:
        """POST /v1/runs/{run_id}/frames."""
        body: FrameBody = await self._body(request, FrameBody)
        duplicate, seq = await self.manager.append_frame(request.path_params["run_id"], body.frame_id, body.type,
                                                         canonical_json(body.payload))
        return JSONResponse({"duplicate": duplicate, "seq": seq}, status_code=200 if duplicate else 202)

    async def cancel(self, request: Request) -> Response:
        """POST /v1/runs/{run_id}/cancel."""
        body: CancelBody = await self._body(request, CancelBody, optional=True)
        duplicate, seq = await self.manager.cancel(request.path_params["run_id"], body.reason)
        return JSONResponse({"duplicate": duplicate, "seq": seq}, status_code=200 if duplicate else 202)

    async def approve(self, request: Request) -> Response:
        """POST /v1/runs/{run_id}/tool-calls/{tool_call_id}/approve."""
        return await self._decide(request, approved=True)

    async def deny(self, request: Request) -> Response:
        """POST /v1/runs/{run_id}/tool-calls/{tool_call_id}/deny."""
        return await self._decide(request, approved=False)

    async def _decide(self, request: Request, approved: bool) -> Response:
        body: DecisionBody = await self._body(request, DecisionBody, optional=True)
        duplicate, seq = await self.manager.decide_tool_call(
            request.path_params["run_id"], request.path_params["tool_call_id"], approved, body.note)
        return JSONResponse({"duplicate": duplicate, "seq": seq}, status_code=200 if duplicate else 202)

    async def stream(self, request: Request) -> Response:
        """GET /v1/runs/{run_id}/stream: the log from the cursor on, as Server-Sent Events."""
        run_id = request.path_params["run_id"]
        header = request.headers.get("last-event-id")
        query = request.query_params.get("cursor")
        violations: dict[str, str] = {}
        values = {}
        for name, text in (("Last-Event-ID", header), ("cursor", query)):
            if text is None:
                continue
            if not text.strip().isdigit():
                violations[name] = f"{text[:32]!r} is not a seq (a non-negative integer)"
            else:
                values[name] = int(text)
        if len(values) == 2 and values["Last-Event-ID"] != values["cursor"]:
            violations["cursor"] = (f"{values['cursor']} differs from Last-Event-ID {values['Last-Event-ID']}; "
                                    "send one of them")
        follow_text = request.query_params.get("follow", "true").lower()
        if follow_text not in ("true", "false", "1", "0"):
            violations["follow"] = "must be true or false"
        if violations:
            raise InvalidRunRequest(violations)
        cursor = next(iter(values.values()), 0)
        follow = follow_text in ("true", "1")
        events = await self.manager.open_stream(run_id, cursor, follow)
        return EventSourceResponse(self._sse(run_id, events, cursor), ping=15, send_timeout=30,
                                   headers={"Cache-Control": "no-store"})

    async def _sse(self, run_id: str, events: AsyncIterator[EventRow], cursor: int) -> AsyncIterator[dict[str, Any]]:
        try:
            async for event in events:
                cursor = event.seq
                yield {"id": str(event.seq), "event": event.type,
                       "data": json.dumps(event_json(event), separators=(",", ":"), ensure_ascii=False)}
            view = await self.manager.get(run_id)
            if view.row.terminal and cursor >= view.row.last_seq:
                yield {"data": "[DONE]"}
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    # --- the server -----------------------------------------------------------------------------------

    async def start_server(self, address: str) -> int:
        """Bind ``host:port`` (port 0 picks one) and serve; returns the bound port."""
        host, _, port = address.rpartition(":")
        config = self.security.config if self.security is not None else None
        if config is not None:
            check_bind(host, int(port), config)  # the HTTP face follows the gRPC rule: loopback unless secured
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), int(port)))
        sock.listen(512)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        tls: dict[str, Any] = {}
        if config is not None and config.tls_enabled:  # HTTPS with client certificates required, as gRPC's mTLS
            tls = {"ssl_certfile": config.tls_cert, "ssl_keyfile": config.tls_key, "ssl_ca_certs": config.tls_ca,
                   "ssl_cert_reqs": ssl.CERT_REQUIRED}
        server_config = uvicorn.Config(self.asgi, log_level="warning", access_log=False, lifespan="off",
                                       timeout_graceful_shutdown=2, **tls)
        self._server = _Server(server_config)
        import asyncio

        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        return self.port

    async def stop(self) -> None:
        """Stop accepting, close open streams (after a short grace), stop the server."""
        if self._server is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await self._task


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: agentd's loop owns SIGTERM/SIGINT and stops us in order."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()
