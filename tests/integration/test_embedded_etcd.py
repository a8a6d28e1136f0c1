"""The embedded etcd starts healthy, survives a restart with its data, and stops."""

from mabeam.etcd.embedded import EmbeddedEtcd


def test_start_stop_restart() -> None:
    server = EmbeddedEtcd()
    try:
        server.start()
        assert server.healthy()
        pid = server.pid
        server.stop()
        assert not server.healthy()
        server.start()
        assert server.healthy() and server.pid != pid
    finally:
        server.close()
    assert not server.data_dir.exists()
