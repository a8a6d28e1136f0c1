"""The etcd client's paged prefix read: a consistent snapshot, also past gRPC's 4 MiB message limit."""

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
