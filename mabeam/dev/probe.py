"""Ask a daemon something from inside a test host's network namespace (its gRPC binds loopback there).

``python -m mabeam.dev.probe health HOST:PORT [SERVICE]`` prints the gRPC
health status (``SERVING``, ``NOT_SERVING``, ``UNREACHABLE``) and exits 0 only
for SERVING. Tests run it with ``ip netns exec <host> ...``.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def health(address: str, service: str = "", timeout: float = 5.0) -> str:
    """The health status name of `service` at `address`, or UNREACHABLE."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=timeout)
        except grpc.RpcError as error:
            return "UNREACHABLE" if error.code() in (grpc.StatusCode.UNAVAILABLE,
                                                     grpc.StatusCode.DEADLINE_EXCEEDED) else error.code().name
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m mabeam.dev.probe")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("health", help="gRPC health of a service")
    check.add_argument("address")
    check.add_argument("service", nargs="?", default="")
    args = parser.parse_args(argv)
    status = health(args.address, args.service)
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
