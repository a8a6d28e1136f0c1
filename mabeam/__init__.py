"""mabeam's shared package: what every daemon and the SDK import.

- ``mabeam.v1``: the generated protobuf/gRPC code for ``proto/mabeam/v1`` (the contract).
- ``mabeam.etcd``: the one interface to etcd (client, lease session, election, embedded server).
- ``mabeam.cli``: the ``mabeam`` command (``mabeam up`` runs a dev cluster on this host).

Daemons (``meshd``, ``agentd``, ``coordinator``) never import each other; they talk
through the contract.
"""

__version__ = "0.1.0"
