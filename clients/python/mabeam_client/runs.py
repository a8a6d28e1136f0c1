"""Client for RunService: start durable runs, feed them frames, stream their logs from any agentd.

``RunClient`` is async; ``SyncRunClient`` is the same API, blocking::

    async with RunClient(["127.0.0.1:7116", "127.0.0.1:7126"]) as runs:
        started = await runs.start("tasker", {"steps": 3}, run_id="order-42")   # idempotent by run_id
        await runs.append("order-42", "f-1", "msg", {"steps": 2, "finish": True})  # idempotent by frame_id
        async for event in runs.stream("order-42"):        # resumes by itself after a disconnect
            print(event.seq, event.type, event.payload_json)
        verdict = await runs.verify("order-42")             # recompute the hash chain

Every agentd serves every run (the log is the truth), so ``stream`` resumes on the
next endpoint with the last seq it delivered as the cursor when one goes away, and
checks that seqs arrive gap-free. Payloads are JSON values. Errors raise the
:mod:`mabeam_client.errors` tree: ``AlreadyExists`` (reason ``RUN_CONFLICT`` or
``FRAME_CONFLICT``), ``NotFound`` (``RUN_NOT_FOUND``), ``FailedPrecondition``
(``STALE_CURSOR`` with ``metadata["retention_floor"]``, ``RUN_TERMINAL``, ``RUN_BUSY``),
``Unavailable``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from mabeam.runchain import Link, Verdict, verify
from mabeam.v1 import run_pb2, run_pb2_grpc
from mabeam_client.errors import MabeamError, translate
from mabeam_client.security import ClientSecurity, open_channel
from mabeam_client.sync import SyncFace

T = TypeVar("T")
_NO_INPUT = object()
#: gRPC codes after which a stream is resumed (the server or the connection went away).
_RESUMABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
              grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass(frozen=True)
class Started:
    """StartRun's answer: the run, and whether this call created it (False: an idempotent replay)."""

    run: run_pb2.Run
    created: bool


@dataclass(frozen=True)
class Appended:
    """AppendFrame's (and CancelRun's) answer: a replay changes nothing (``duplicate``); ``seq`` of the event."""

    duplicate: bool
    seq: int


class GapError(MabeamError):
    """A stream delivered a seq that is not the previous one plus one (never expected; a bug if seen)."""


class RunClient:
    """Async RunService client over one or more agentd endpoints (``host:port``)."""

    def __init__(self, endpoints: str | Sequence[str], timeout: float = 30.0,
                 security: ClientSecurity | None = None) -> None:
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not self.endpoints:
            raise ValueError("at least one agentd endpoint is required")
        self.timeout = timeout
        self._channels = [open_channel(e, security) for e in self.endpoints]
        self._stubs = [run_pb2_grpc.RunServiceStub(c) for c in self._channels]
        self._current = 0
        #: How many times ``stream`` reconnected (for tests and tooling).
        self.resumes = 0

    async def close(self) -> None:
        """Close the channels."""
        for channel in self._channels:
            await channel.close()

    async def __aenter__(self) -> RunClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def _stub(self) -> run_pb2_grpc.RunServiceStub:
        return self._stubs[self._current]

    async def _call(self, method: Callable[[run_pb2_grpc.RunServiceStub], Callable[..., Awaitable[T]]],
                    request: Any) -> T:
        """A unary call on the current endpoint, moving to the next one when it is unavailable."""
        last: MabeamError | None = None
        for _ in range(len(self._stubs)):
            try:
                return await method(self._stub)(request, timeout=self.timeout)
            except grpc.RpcError as error:
                last = translate(error)
                if error.code() != grpc.StatusCode.UNAVAILABLE or len(self._stubs) == 1:
                    raise last from None
                self._current = (self._current + 1) % len(self._stubs)
        assert last is not None
        raise last

    async def start(self, agent_type: str, input: Any = _NO_INPUT, *, run_id: str = "",  # noqa: A002
                    tenant: str = "", input_policy: str = "", labels: dict[str, str] | None = None) -> Started:
        """Start a run of ``agent_type`` (``input``: its first frame); idempotent by ``run_id``."""
        request = run_pb2.StartRunRequest(run_id=run_id, tenant=tenant, agent_type=agent_type,
                                          input_json="" if input is _NO_INPUT else json.dumps(input),
                                          input_policy=input_policy, labels=labels or {})
        response = await self._call(lambda s: s.StartRun, request)
        return Started(response.run, response.created)

    async def append(self, run_id: str, frame_id: str, type_: str, payload: Any = None) -> Appended:
        """Append a frame; the same frame_id and content again is a replay (``duplicate``)."""
        request = run_pb2.AppendFrameRequest(run_id=run_id, frame_id=frame_id, type=type_,
                                             payload_json=json.dumps(payload))
        response = await self._call(lambda s: s.AppendFrame, request)
        return Appended(response.duplicate, response.seq)

    async def cancel(self, run_id: str, reason: str = "") -> Appended:
        """Request cancellation (durable at once; a replay is ``duplicate``)."""
        response = await self._call(lambda s: s.CancelRun, run_pb2.CancelRunRequest(run_id=run_id, reason=reason))
        return Appended(response.duplicate, response.seq)

    async def approve(self, run_id: str, tool_call_id: str, note: str = "") -> Appended:
        """Approve a tool call waiting for a human (durable; the same decision again is ``duplicate``)."""
        request = run_pb2.ToolCallDecisionRequest(run_id=run_id, tool_call_id=tool_call_id, note=note)
        response = await self._call(lambda s: s.ApproveToolCall, request)
        return Appended(response.duplicate, response.seq)

    async def deny(self, run_id: str, tool_call_id: str, note: str = "") -> Appended:
        """Deny a tool call waiting for a human (durable; final)."""
        request = run_pb2.ToolCallDecisionRequest(run_id=run_id, tool_call_id=tool_call_id, note=note)
        response = await self._call(lambda s: s.DenyToolCall, request)
        return Appended(response.duplicate, response.seq)

    async def get(self, run_id: str) -> run_pb2.Run:
        """A run's snapshot."""
        run: run_pb2.Run = (await self._call(lambda s: s.GetRun, run_pb2.GetRunRequest(run_id=run_id))).run
        return run

    async def list(self, tenant: str = "", agent_type: str = "", status: str = "", page_size: int = 0,
                   page_token: str = "") -> tuple[list[run_pb2.Run], str]:
        """One page of runs, newest first, and the next page's token ("" on the last page)."""
        request = run_pb2.ListRunsRequest(tenant=tenant, agent_type=agent_type, status=status,
                                          page_size=page_size, page_token=page_token)
        response = await self._call(lambda s: s.ListRuns, request)
        return list(response.runs), response.next_page_token

    async def stream(self, run_id: str, cursor: int = 0, follow: bool = True, raw: bool = False,
                     resume_timeout: float = 60.0) -> AsyncIterator[run_pb2.RunEvent]:
        """The run's events from ``cursor + 1``, gap-free; with ``follow`` until the run ends.

        When the connection breaks the stream is opened again — on the next endpoint — from the
        last seq delivered, for up to ``resume_timeout`` seconds without progress; errors the
        server answers with (NotFound, FailedPrecondition such as STALE_CURSOR) are raised.
        """
        last = cursor
        stalled_since: float | None = None
        while True:
            stub = self._stub
            try:
                request = run_pb2.StreamRunRequest(run_id=run_id, cursor=last, follow=follow, raw=raw)
                async for event in stub.StreamRun(request):
                    if event.seq != last + 1:
                        raise GapError(f"stream of {run_id} jumped from seq {last} to {event.seq}")
                    last = event.seq
                    stalled_since = None
                    yield event
                return
            except grpc.RpcError as error:
                if error.code() not in _RESUMABLE:
                    raise translate(error) from None
                now = time.monotonic()
                stalled_since = stalled_since if stalled_since is not None else now
                if now - stalled_since > resume_timeout:
                    raise translate(error) from None
                self.resumes += 1
                self._current = (self._current + 1) % len(self._stubs)
                await asyncio.sleep(0.05 if len(self._stubs) > 1 else 0.2)

    async def verify(self, run_id: str) -> Verdict:
        """Recompute the run's hash chain from its raw events; ``first_bad_seq`` names the first bad event."""
        run = await self.get(run_id)
        first = run.retention_floor
        links = [Link(e.seq, e.type, e.version, None if e.pruned else e.payload_json, e.payload_sha256, e.prev_hash,
                      e.hash)
                 async for e in self.stream(run_id, cursor=first - 1, follow=False, raw=True)]
        # Below the retention floor nothing is left to anchor the first prev_hash to: it is taken as stored.
        return verify(run_id, links, first_seq=first)


class SyncRunClient(SyncFace):
    """The same API as :class:`RunClient`, blocking (``stream`` is a plain iterator)."""

    def __init__(self, endpoints: str | Sequence[str], timeout: float = 30.0,
                 security: ClientSecurity | None = None) -> None:
        super().__init__(lambda: RunClient(endpoints, timeout, security))
