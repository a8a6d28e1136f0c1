"""The meshd data plane: ZeroMQ priority channels between meshd peers, local attach, calls.

What a caller must do (meshd): build a :class:`DataPlane` with the node id, a
:class:`DataPlaneConfig` and a :class:`RegistryView` over its registry cache;
``await start()``; publish ``addresses`` and ``curve_public_key`` in the node's
``NodeInfo``; call ``peer_up``/``peer_down`` from the membership watch; serve
the gRPC face with :mod:`meshd.dataplane.grpc_face`; ``await stop()`` at exit.
The wire types, the envelope codec, the errors and the attach client that
processes on the host use live in the shared package :mod:`mabeam.dataplane`.
The contract (wire format, channels, semantics, figures) is docs/dataplane.md.
"""

from meshd.dataplane.config import DataPlaneConfig
from meshd.dataplane.endpoint import LocalEndpoint
from meshd.dataplane.plane import DataPlane
from meshd.dataplane.registry import InMemoryRegistry, RegistryView

__all__ = ["DataPlane", "DataPlaneConfig", "InMemoryRegistry", "LocalEndpoint", "RegistryView"]
