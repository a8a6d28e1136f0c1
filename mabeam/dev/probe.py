"""Ask a daemon something from inside a test host's network namespace (its gRPC binds loopback there).

``python -m mabeam.dev.probe health HOST:PORT [SERVICE]`` prints the gRPC
health status (``SERVING``, ``NOT_SERVING``, ``UNREACHABLE``) and exits 0 only
for SERVING; with ``--tls-ca/--tls-cert/--tls-key`` it speaks mTLS (health needs
no token). Tests run it with ``ip netns exec <host> ...``.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def channel_to(address: str, tls: tuple[str, str, str] | None = None) -> grpc.Channel:
    """A channel to `address`: plaintext, or mTLS with (CA, client certificate, client key) files."""
    if tls is None:
        return grpc.insecure_channel(address)
    ca, cert, key = (open(path, "rb").read() for path in tls)  # noqa: SIM115 - small files, read at once
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(ca, key, cert))


def health(address: str, service: str = "", timeout: float = 5.0, tls: tuple[str, str, str] | None = None) -> str:
    """The health status name of `service` at `address`, or UNREACHABLE."""
    with channel_to(address, tls) as channel:
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
    for flag in ("--tls-ca", "--tls-cert", "--tls-key"):
        check.add_argument(flag, default="")
    args = parser.parse_args(argv)
    tls = (args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None
    status = health(args.address, args.service, tls=tls)
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
