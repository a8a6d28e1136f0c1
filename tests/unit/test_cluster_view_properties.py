"""Property: a view kept current by watch events equals a view reloaded from the final state."""

from hypothesis import given, settings
from hypothesis import strategies as st

from mabeam import keys
from mabeam.etcd.client import KeyValue, WatchBatch, WatchEvent
from mabeam.v1 import common_pb2, mesh_pb2
from meshd.view import ClusterView

C = "prop"
NODES = ["a", "b", "c"]


def key_and_value(kind: str, node: str, slot: int) -> tuple[bytes, bytes]:
    if kind == "member":
        return keys.member(C, node), common_pb2.NodeInfo(node_id=node).SerializeToString()
    if kind == "name":
        entry = mesh_pb2.NameEntry(tenant="default", name=f"n{slot}", target=common_pb2.AgentRef(node_id=node))
        return keys.name(C, "default", f"n{slot}"), entry.SerializeToString()
    if kind == "group":
        member = mesh_pb2.GroupMember(tenant="default", group=f"g{slot % 2}")
        return keys.group_member(C, "default", f"g{slot % 2}", node, f"x{slot}"), member.SerializeToString()
    info = mesh_pb2.LeaderInfo(role="mesh", node_id=node)
    return keys.election(C, "mesh") + f"{slot:016x}".encode(), info.SerializeToString()


operation = st.tuples(st.sampled_from(["put", "delete"]), st.sampled_from(["member", "name", "group", "candidate"]),
                      st.sampled_from(NODES), st.integers(0, 3))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(operation, min_size=1, max_size=4), max_size=12))
def test_incremental_view_equals_reload(batches: list[list[tuple[str, str, str, int]]]) -> None:
    store: dict[bytes, KeyValue] = {}
    view = ClusterView(C)
    view.reload([], 1)
    revision = 1
    for batch in batches:
        events = []
        for op, kind, node, slot in batch:
            revision += 1
            key, value = key_and_value(kind, node, slot)
            if op == "put":
                old = store.get(key)
                kv = KeyValue(key, value, old.create_revision if old else revision, revision, 1, 0)
                store[key] = kv
                events.append(WatchEvent("put", kv, old))
            elif key in store:
                old = store.pop(key)
                events.append(WatchEvent("delete", KeyValue(key, b"", 0, revision, 0, 0), old))
        view.apply(WatchBatch(revision, tuple(events)))
    fresh = ClusterView(C)
    fresh.reload(list(store.values()), revision)
    assert view.members == fresh.members
    assert view.names == fresh.names
    assert view.groups == fresh.groups
    assert view.leader("mesh") == fresh.leader("mesh")
    assert view.revision == fresh.revision
