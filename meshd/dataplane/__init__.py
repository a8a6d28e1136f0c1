"""The meshd data plane: ZeroMQ priority channels between meshd peers, local attach, calls.

What a caller must do (meshd): build a :class:`DataPlane` with the node id, a
:class:`DataPlaneConfig` and a :class:`RegistryView` over its registry cache;
``await start()``; publish ``addresses`` and ``curve_public_key`` in the node's
``NodeInfo``; call ``peer_up``/``peer_down`` from the membership watch; serve
the gRPC face with :mod:`meshd.dataplane.grpc_face`; ``await stop()`` at exit.
Processes on the host use :class:`meshd.dataplane.attach.AttachedEndpoint`.
The contract (wire format, channels, semantics, figures) is docs/dataplane.md.
"""

from meshd.dataplane.config import DataPlaneConfig
from meshd.dataplane.endpoint import Group, LocalEndpoint, Message
from meshd.dataplane.errors import (
    DataPlaneError,
    DeadlineExceeded,
    MessageTooLarge,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from meshd.dataplane.plane import DataPlane
from meshd.dataplane.registry import AgentRef, InMemoryRegistry, RegistryView

__all__ = [
    "AgentRef", "DataPlane", "DataPlaneConfig", "DataPlaneError", "DeadlineExceeded", "Group",
    "InMemoryRegistry", "LocalEndpoint", "Message", "MessageTooLarge", "NotFound", "RegistryView",
    "ResourceExhausted", "Unavailable",
]
