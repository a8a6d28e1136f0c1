"""The shared data-plane client: what every process that uses the mesh's data plane needs.

- :mod:`mabeam.dataplane.message` — the wire-level value types: ``AgentRef``,
  ``Group``, ``Destination`` and the delivered ``Message``;
- :mod:`mabeam.dataplane.envelope` — the envelope codec (frames in, typed
  ``FrameError`` out; never unpickles);
- :mod:`mabeam.dataplane.errors` — the typed data-plane errors, keyed by gRPC
  status code;
- :mod:`mabeam.dataplane.attach` — ``AttachedEndpoint``, the client a process
  on a host uses to attach to its meshd (agentd, benches, external tools).

meshd imports this package; so do agentd, the benches and the SDK. It imports
no daemon and starts no threads at import time.
"""

from mabeam.dataplane.errors import (
    DataPlaneError,
    DeadlineExceeded,
    InvalidArgument,
    MessageTooLarge,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from mabeam.dataplane.message import AgentRef, Destination, Group, Message

__all__ = [
    "AgentRef", "DataPlaneError", "DeadlineExceeded", "Destination", "Group", "InvalidArgument", "Message",
    "MessageTooLarge", "NotFound", "ResourceExhausted", "Unavailable",
]
