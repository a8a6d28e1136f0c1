"""The gRPC RunService over a :class:`~agentd.runs.manager.RunManager`.

:func:`service_error` is the one place a durable-runs error becomes a :class:`~mabeam.errors.ServiceError`
(code, ErrorReason, message, BadRequest, ErrorInfo metadata such as ``retention_floor``); the methods raise
it and the daemon's :class:`~mabeam.grpcutil.ErrorInterceptor` answers with the status.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from agentd.runs.manager import RunManager, RunView
from agentd.runs.model import EventRow, InvalidRunRequest, RunError, RunsUnavailable
from agentd.runs.upcasters import upcast
from mabeam.errors import FieldViolation, ServiceError
from mabeam.etcd.client import EtcdError
from mabeam.v1 import run_pb2, run_pb2_grpc

R = TypeVar("R")


def service_error(error: RunError) -> ServiceError:
    """The gRPC error for a durable-runs error."""
    violations = [FieldViolation(f, d) for f, d in getattr(error, "violations", {}).items()]
    retry = 0.5 if isinstance(error, RunsUnavailable) else None
    return ServiceError(getattr(grpc.StatusCode, error.code, grpc.StatusCode.UNKNOWN), error.message, error.reason,
                        violations, retry, error.metadata)


def _translate(error: BaseException) -> ServiceError | None:
    if isinstance(error, RunError):
        return service_error(error)
    if isinstance(error, EtcdError):
        return service_error(RunsUnavailable(f"etcd: {error}"))
    return None


def translated(method: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Decorator for unary methods: RunError / EtcdError are raised again as ServiceError."""
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await method(self, request, context)
        except (RunError, EtcdError) as error:
            status = _translate(error)
            assert status is not None
            raise status from None
    return wrapper


def run_message(view: RunView) -> run_pb2.Run:
    """A run snapshot as the contract's Run message."""
    row = view.row
    executor = run_pb2.RunExecutor(node_id=row.executor_node, agent=row.agent_type if row.executor_node else "",
                                   lease_id=row.executor_lease, fencing_token=row.executor_token, live=view.live)
    return run_pb2.Run(
        run_id=row.run_id, tenant=row.tenant, agent_type=row.agent_type, status=row.status,
        input_policy=row.input_policy, last_seq=row.last_seq, retention_floor=row.retention_floor,
        executor=executor, frames_pending=row.frames_pending,
        counters=run_pb2.RunCounters(frames=row.frames, steps=row.steps, recoveries=row.recoveries,
                                     checkpoints=row.checkpoints, emitted=row.emitted),
        cancel_requested=row.cancel_requested, error_class=row.error_class, error_message=row.error_message,
        created_unix_ms=row.created_ms, updated_unix_ms=row.updated_ms, labels=row.labels_dict(),
        output_json=row.output)


def event_message(event: EventRow, raw: bool) -> run_pb2.RunEvent:
    """An event as the contract's RunEvent (upcast to the current version unless ``raw``)."""
    version, payload = event.version, event.payload
    if not raw and payload is not None:
        from agentd.runs.model import canonical_json

        new_version, value = upcast(event.type, version, event.payload_value())
        if new_version != version:
            version, payload = new_version, canonical_json(value)
    return run_pb2.RunEvent(run_id=event.run_id, seq=event.seq, type=event.type, version=version,
                            time_unix_ms=event.time_ms, payload_json=payload if payload is not None else "null",
                            payload_sha256=event.payload_sha256, hash=event.hash, prev_hash=event.prev_hash,
                            pruned=event.payload is None)


class RunServicer(run_pb2_grpc.RunServiceServicer):
    """StartRun, AppendFrame, StreamRun, CancelRun, GetRun, ListRuns (see proto/mabeam/v1/run.proto)."""

    def __init__(self, manager: RunManager | None) -> None:
        self.manager = manager

    def _manager(self) -> RunManager:
        if self.manager is None:
            raise RunsUnavailable("durable runs are off on this agentd: start it with --etcd (runs need etcd)")
        return self.manager

    @translated
    async def StartRun(self, request: run_pb2.StartRunRequest,  # noqa: N802
                       context: grpc.aio.ServicerContext) -> run_pb2.StartRunResponse:
        """Start a run, idempotent by run_id."""
        view, created = await self._manager().start_run(request.run_id, request.tenant, request.agent_type,
                                                        request.input_json, request.input_policy,
                                                        dict(request.labels))
        return run_pb2.StartRunResponse(run=run_message(view), created=created)

    @translated
    async def AppendFrame(self, request: run_pb2.AppendFrameRequest,  # noqa: N802
                          context: grpc.aio.ServicerContext) -> run_pb2.AppendFrameResponse:
        """Append one input frame, idempotent by frame_id."""
        duplicate, seq = await self._manager().append_frame(request.run_id, request.frame_id, request.type,
                                                            request.payload_json)
        return run_pb2.AppendFrameResponse(duplicate=duplicate, seq=seq)

    @translated
    async def CancelRun(self, request: run_pb2.CancelRunRequest,  # noqa: N802
                        context: grpc.aio.ServicerContext) -> run_pb2.CancelRunResponse:
        """Request cancellation (durable at once)."""
        duplicate, seq = await self._manager().cancel(request.run_id, request.reason)
        return run_pb2.CancelRunResponse(duplicate=duplicate, seq=seq)

    @translated
    async def GetRun(self, request: run_pb2.GetRunRequest,  # noqa: N802
                     context: grpc.aio.ServicerContext) -> run_pb2.GetRunResponse:
        """A run's snapshot."""
        return run_pb2.GetRunResponse(run=run_message(await self._manager().get(request.run_id)))

    @translated
    async def ListRuns(self, request: run_pb2.ListRunsRequest,  # noqa: N802
                       context: grpc.aio.ServicerContext) -> run_pb2.ListRunsResponse:
        """A page of runs."""
        views, token = await self._manager().list(request.tenant, request.agent_type, request.status,
                                                  request.page_size, request.page_token)
        return run_pb2.ListRunsResponse(runs=[run_message(v) for v in views], next_page_token=token)

    @translated
    async def ApproveToolCall(self, request: run_pb2.ToolCallDecisionRequest,  # noqa: N802
                              context: grpc.aio.ServicerContext) -> run_pb2.ToolCallDecisionResponse:
        """Approve a tool call waiting for a human (a durable decision frame)."""
        duplicate, seq = await self._manager().decide_tool_call(request.run_id, request.tool_call_id, True,
                                                                request.note)
        return run_pb2.ToolCallDecisionResponse(duplicate=duplicate, seq=seq)

    @translated
    async def DenyToolCall(self, request: run_pb2.ToolCallDecisionRequest,  # noqa: N802
                           context: grpc.aio.ServicerContext) -> run_pb2.ToolCallDecisionResponse:
        """Deny a tool call waiting for a human (a durable decision frame)."""
        duplicate, seq = await self._manager().decide_tool_call(request.run_id, request.tool_call_id, False,
                                                                request.note)
        return run_pb2.ToolCallDecisionResponse(duplicate=duplicate, seq=seq)

    async def StreamRun(self, request: run_pb2.StreamRunRequest,  # noqa: N802
                        context: grpc.aio.ServicerContext) -> AsyncIterator[run_pb2.RunEvent]:
        """Events from cursor + 1, gap-free; with follow, until the run ends."""
        try:
            events = await self._manager().open_stream(request.run_id, request.cursor, request.follow)
            async for event in events:
                yield event_message(event, request.raw)
        except (RunError, EtcdError) as error:
            status = _translate(error)
            assert status is not None
            raise status from None


__all__ = ["RunServicer", "service_error", "InvalidRunRequest"]
