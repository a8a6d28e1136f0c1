"""The etcd client: paged prefix reads (a consistent snapshot, also past gRPC's 4 MiB limit), a closed client."""

from mabeam.etcd.client import EtcdClient


async def test_get_prefix_pages_at_one_revision(etcd_server, cluster_name) -> None:
    client = EtcdClient([etcd_server.endpoint])
    prefix = f"/test/{cluster_name}/paged/".encode()
    try:
        for i in range(50):
            await client.put(prefix + f"{i:03d}".encode(), b"v")
        kvs, revision = await client.get_prefix(prefix, page=7)
        assert [kv.key for kv in kvs] == [prefix + f"{i:03d}".encode() for i in range(50)]
        assert all(kv.mod_revision <= revision for kv in kvs)
    finally:
        await client.delete(prefix, prefix=True)
        await client.close()


async def test_get_prefix_past_the_4mib_message_limit(etcd_server, cluster_name) -> None:
    client = EtcdClient([etcd_server.endpoint])
    prefix = f"/test/{cluster_name}/big/".encode()
    try:
        for i in range(6):  # 6 MiB in all: one range answer would exceed gRPC's 4 MiB limit
            await client.put(prefix + str(i).encode(), bytes([i]) * (1 << 20))
        kvs, _ = await client.get_prefix(prefix)
        assert [kv.value[:1] for kv in kvs] == [bytes([i]) for i in range(6)]
        assert all(len(kv.value) == 1 << 20 for kv in kvs)
    finally:
        await client.delete(prefix, prefix=True)
        await client.close()


async def test_a_request_on_a_closed_client_is_etcd_unavailable(etcd_server, cluster_name) -> None:
    """A daemon shutting down closes its client while requests may still come (a coordinator's bid stream
    asking for the leader): they fail as EtcdUnavailable, which callers turn into UNAVAILABLE, not INTERNAL."""
    import pytest

    from mabeam.etcd.client import EtcdUnavailable

    client = EtcdClient([etcd_server.endpoint])
    await client.put(f"/test/{cluster_name}/k".encode(), b"v")
    await client.close()
    with pytest.raises(EtcdUnavailable, match="closed"):
        await client.get_prefix(f"/test/{cluster_name}/".encode())
