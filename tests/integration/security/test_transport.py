"""mTLS on gRPC, the loopback rule, and key rotation, against real daemons.

- a plaintext client, a TLS client without a certificate and one whose certificate comes from another
  CA are all refused by the TLS handshake (nothing reaches the servicer); the cluster's own client works;
- a daemon asked to serve a non-loopback address without tokens and mTLS stops at startup, saying why;
  so does meshd's data plane without CURVE;
- rotation: a key added to the daemons' key directory is trusted within seconds (tokens of the old and
  the new key both verify), and once the old one is removed its tokens are refused; keys published in
  etcd are followed the same way.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time

import pytest

from mabeam.dev.cluster import DevCluster
from mabeam.etcd.client import EtcdClient
from mabeam.security.certs import write_pki
from mabeam.security.keyfiles import load_private_key, write_keypair
from mabeam.security.keys import KeyRing, publish, withdraw
from mabeam.security.tokens import TokenError, TokenVerifier, issue
from mabeam_client.errors import Unauthenticated, Unavailable
from mabeam_client.mesh import MeshClient
from mabeam_client.security import ClientSecurity


async def test_only_the_clusters_client_certificates_get_in(secure_cluster: DevCluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    security = secure_cluster.security
    assert security is not None
    endpoint = secure_cluster.nodes[0].endpoint
    token = security.token()
    stranger = write_pki(tmp_path / "other-ca", ["intruder"])["intruder"]  # a certificate of another CA
    cases = {
        "plaintext": ClientSecurity(token=token),
        "no client certificate": ClientSecurity(token=token, tls_ca=str(security.ca)),
        "another CA's certificate": ClientSecurity(token=token, tls_ca=str(security.ca), tls_cert=str(stranger[0]),
                                                   tls_key=str(stranger[1])),
    }
    for credentials in cases.values():
        async with MeshClient(endpoint, timeout=5.0, security=credentials) as mesh:
            with pytest.raises(Unavailable):  # the handshake fails: no RPC ever reaches the server
                await mesh.ping()
    async with MeshClient(endpoint, security=security.client()) as mesh:
        assert (await mesh.ping()).node.node_id == "node-1"


@pytest.mark.parametrize(("daemon", "args", "config", "says"), [
    ("meshd", ["--grpc-host", "0.0.0.0"], "", "refusing to serve gRPC on 0.0.0.0"),
    ("meshd", ["--grpc-host", "127.0.0.1"], '[dataplane]\nbind_host = "0.0.0.0"\n', "refusing to bind the data plane"),
    ("coordinator", ["--grpc-host", "0.0.0.0"], "", "refusing to serve gRPC on 0.0.0.0"),
    ("agentd", ["--grpc-address", "0.0.0.0:0"], "", "refusing to serve gRPC on 0.0.0.0"),
], ids=["meshd-grpc", "meshd-dataplane", "coordinator", "agentd"])
def test_an_unsecured_daemon_binds_loopback_only(daemon: str, args: list[str], config: str, says: str,
                                                 tmp_path) -> None:  # type: ignore[no-untyped-def]
    argv = [sys.executable, "-m", daemon, *args]
    if config:
        (tmp_path / "daemon.toml").write_text(config)
        argv += ["--config", str(tmp_path / "daemon.toml")]
    if daemon in ("meshd", "coordinator"):
        argv += ["--etcd", "127.0.0.1:1", "--grpc-port", "0"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert says in done.stderr


async def test_rotation_through_the_key_directory(secure_cluster: DevCluster) -> None:
    security = secure_cluster.security
    assert security is not None
    endpoint = secure_cluster.nodes[0].endpoint
    issuer = security.directory / "issuer"
    write_keypair(issuer, "next")
    new_key = load_private_key(issuer / "next.key")
    new_token = issue(new_key, "next", cluster=secure_cluster.cluster, tenant="default", roles=["reader"],
                      subject="rotated", ttl_s=600)
    old_token = security.token(roles=["reader"])

    async def works(token: str) -> bool:
        async with MeshClient(endpoint, security=security.client(token=token)) as mesh:
            try:
                await mesh.ping()
                return True
            except Unauthenticated:
                return False

    assert not await works(new_token)
    shutil.copy(issuer / "next.pub", security.token_keys / "next.pub")  # 1. trust the new key
    deadline = time.monotonic() + 20
    while not await works(new_token):
        assert time.monotonic() < deadline, "the daemon never trusted the new key"
        await asyncio.sleep(0.1)
    assert await works(old_token)  # both keys are valid during the rotation
    (security.token_keys / "dev.pub").unlink()  # 2. retire the old key
    try:
        deadline = time.monotonic() + 20
        while await works(old_token):
            assert time.monotonic() < deadline, "the daemon kept trusting the removed key"
            await asyncio.sleep(0.1)
        assert await works(new_token)
    finally:
        shutil.copy(issuer / "dev.pub", security.token_keys / "dev.pub")


async def test_keys_published_in_etcd_are_followed(etcd_server, cluster_name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    write_keypair(tmp_path, "k1")
    key = load_private_key(tmp_path / "k1.key")
    ring = KeyRing()
    verifier = TokenVerifier(ring, cluster_name)
    token = issue(key, "k1", cluster=cluster_name, tenant="acme", roles=["agent"], subject="a", ttl_s=60)
    etcd = EtcdClient([etcd_server.endpoint])
    follower = asyncio.create_task(ring.follow_etcd(etcd, cluster_name))
    try:
        with pytest.raises(TokenError):
            verifier.verify(token)
        await publish(etcd, cluster_name, "k1", key.public_key())
        deadline = time.monotonic() + 10
        while "k1" not in ring.key_ids:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert verifier.verify(token).tenant == "acme"
        assert await withdraw(etcd, cluster_name, "k1")
        while "k1" in ring.key_ids:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        with pytest.raises(TokenError):
            verifier.verify(token)
    finally:
        follower.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follower
        await etcd.close()
