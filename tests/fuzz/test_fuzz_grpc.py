"""Fuzzed requests at every method of every mabeam.v1 service, against real daemons.

One dev-cluster node (meshd, agentd, coordinator as OS processes on the test
etcd). The methods come from the contract's service descriptors and the
daemon serving each service from gRPC reflection, so a new RPC (or a new
service a daemon serves) is fuzzed without being listed. Each method gets
hypothesis-drawn request bytes (see fuzz_messages.py): well-formed but
oversized or out of range, unknown enum values, unset fields, invalid UTF-8,
random and mutated bytes. Every answer must be a success or a typed status —
a code other than UNKNOWN/INTERNAL with an ErrorInfo reason from
``mabeam.v1.ErrorReason`` — the daemon must stay SERVING, and every daemon's
``mabeam_rejected_requests_total`` must have counted what it refused.
Examples are derandomized (the same inputs each run: the suite never flakes)
and few, so the whole file stays within about a minute on a busy machine.
"""

from __future__ import annotations

import importlib
import pkgutil
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from fuzz_messages import request_bytes
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings

import mabeam.v1
from mabeam.v1 import common_pb2

EXAMPLES = 12
CALL_TIMEOUT = 5.0
REASONS = set(common_pb2.ErrorReason.keys())
#: Answers gRPC gives on the client side (our own deadline, our cancel of an endless stream).
CLIENT_SIDE = {grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}


def _services() -> list[ServiceDescriptor]:
    found: list[ServiceDescriptor] = []
    for info in pkgutil.iter_modules(mabeam.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"mabeam.v1.{info.name}")
            found += list(module.DESCRIPTOR.services_by_name.values())
    return sorted(found, key=lambda s: s.full_name)


METHODS: list[tuple[str, MethodDescriptor]] = [(s.full_name, m) for s in _services() for m in s.methods]


@dataclass
class Daemons:
    """The fuzzed node: which endpoint serves which service, and each daemon's /metrics."""

    served: dict[str, str]
    metrics: dict[str, str]
    channels: dict[str, grpc.Channel] = field(default_factory=dict)

    def channel(self, endpoint: str) -> grpc.Channel:
        if endpoint not in self.channels:
            self.channels[endpoint] = grpc.insecure_channel(endpoint)
        return self.channels[endpoint]

    def serving(self, endpoint: str) -> bool:
        stub = health_pb2_grpc.HealthStub(self.channel(endpoint))
        answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def _reflected(channel: grpc.Channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    for response in stub.ServerReflectionInfo(iter([request]), timeout=10):
        return [s.name for s in response.list_services_response.service]
    return []


@pytest.fixture(scope="module")
def daemons(etcd_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemons]:
    from mabeam.dev.cluster import DevCluster

    cluster = DevCluster(1, etcd=etcd_server.endpoint, cluster=f"fz{uuid.uuid4().hex[:10]}",
                         lease_ttl=2, agentd=True, coordinator=True,
                         run_dir=tmp_path_factory.mktemp("fuzz-cluster")).start()  # logs kept for a failure
    try:
        node = cluster.nodes[0]
        found = Daemons(served={}, metrics={})
        for daemon in node.daemons:
            for service in _reflected(found.channel(daemon.endpoint)):
                if service.startswith("mabeam.v1."):
                    found.served[service] = daemon.endpoint
            found.metrics[daemon.kind] = daemon.metrics_address
        yield found
        for channel in found.channels.values():
            channel.close()
    finally:
        cluster.close()


def _reason(error: grpc.RpcError) -> str:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return info.reason
    return ""


def _check(path: str, error: grpc.RpcError) -> None:
    code = error.code()
    reason = _reason(error)
    if code in CLIENT_SIDE and not reason:
        return
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), \
        f"{path} crashed: {code.name} {error.details()}"
    assert reason in REASONS, f"{path}: {code.name} {error.details()!r} carries no ErrorReason ({reason!r})"


def _ask(channel: grpc.Channel, path: str, method: MethodDescriptor, raw: bytes) -> None:
    streaming_in, streaming_out = method.client_streaming, method.server_streaming
    try:
        if not streaming_in and not streaming_out:
            channel.unary_unary(path)(raw, timeout=CALL_TIMEOUT)
            return
        if streaming_in:
            responses = channel.stream_stream(path)(iter([raw, raw]), timeout=CALL_TIMEOUT) if streaming_out \
                else None
            if responses is None:
                channel.stream_unary(path)(iter([raw, raw]), timeout=CALL_TIMEOUT)
                return
        else:
            responses = channel.unary_stream(path)(raw, timeout=CALL_TIMEOUT)
        try:
            next(responses, None)  # the first answer (a watch goes on forever: one is enough)
        finally:
            responses.cancel()
    except grpc.RpcError as error:
        _check(path, error)


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[f"{s.split('.')[-1]}.{m.name}" for s, m in METHODS])
def test_fuzzed_requests_get_typed_statuses_and_the_daemon_keeps_serving(daemons: Daemons, service: str,
                                                                         method: MethodDescriptor) -> None:
    endpoint = daemons.served.get(service)
    if endpoint is None:
        pytest.skip(f"{service} is served by no daemon of the dev cluster")
    channel = daemons.channel(endpoint)
    path = f"/{service}/{method.name}"

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(raw=request_bytes(method.input_type))
    def fuzz(raw: bytes) -> None:
        _ask(channel, path, method, raw)

    fuzz()
    assert daemons.serving(endpoint), f"{endpoint} stopped serving after fuzzing {path}"


def _rejected(url: str) -> float:
    text = urllib.request.urlopen(f"http://{url}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("mabeam_rejected_requests_total{"))


def test_every_daemon_counted_what_it_refused(daemons: Daemons) -> None:
    # Runs after the fuzzing above (file order): each daemon's /metrics shows the refusals.
    counts = {kind: _rejected(url) for kind, url in daemons.metrics.items()}
    assert set(counts) == {"meshd", "agentd", "coordinator"}
    assert all(count > 0 for count in counts.values()), counts
