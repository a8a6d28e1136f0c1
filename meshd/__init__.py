"""meshd: the per-host mesh daemon.

Joins the cluster through etcd (membership under a node lease), campaigns for
leader roles, keeps the cluster-wide name/group registry in a local cache fed by
an etcd watch, and serves ``MeshService`` over gRPC. Run it with ``meshd``.
"""
