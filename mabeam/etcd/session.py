"""A lease kept alive on one stream, the anchor of everything a node owns in etcd.

aetcd opens a new stream per refresh; a session keeps one LeaseKeepAlive
stream and sends at TTL/3, so a node survives two lost keepalives. When etcd is
unreachable the session keeps retrying; once etcd answers that the lease is
gone (expired during a long outage, or etcd was replaced), the session is
*lost*: the owner must open a new one and re-register what it owned.

``expired_locally`` turns true when no keepalive has succeeded for a whole TTL:
etcd has (or will soon have) dropped the lease, so a leader must stop acting
as one even before etcd can confirm it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import grpc
from aetcd import rpc

from mabeam.etcd.client import EtcdClient, EtcdError, closed_under_call

log = logging.getLogger(__name__)


class Session:
    """One etcd lease and its keepalive loop.

    Create with :meth:`open` and run :meth:`keepalive` as a task in the owner's
    TaskGroup; it returns when the lease is lost (``lost`` is then set) and
    raises nothing for etcd outages, which it rides out.
    """

    def __init__(self, client: EtcdClient, lease_id: int, ttl: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.lease_id = lease_id
        self.ttl = ttl
        self._clock = clock
        self.last_renewed = clock()
        self.lost = asyncio.Event()
        self._closed = False

    @classmethod
    async def open(cls, client: EtcdClient, ttl: int) -> Session:
        """Grant a lease with `ttl` seconds (etcd's minimum is about 2 s)."""
        lease_id, granted = await client.grant(ttl)
        return cls(client, lease_id, granted)

    @property
    def expired_locally(self) -> bool:
        """No keepalive has succeeded for a full TTL: act as if the lease were gone."""
        return self.lost.is_set() or self._clock() - self.last_renewed >= self.ttl

    async def keepalive(self) -> None:
        """Renew the lease every TTL/3 until it is lost or the session is closed."""
        interval = self.ttl / 3
        while not self._closed and not self.lost.is_set():
            call = self.client.keepalive_stream()
            try:
                while not self._closed:
                    await call.write(rpc.LeaseKeepAliveRequest(ID=self.lease_id))
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the result when the read
                    # completes in the same turn as a cancel and drops the cancellation, and this loop then
                    # renewed the lease forever: meshd hung on SIGTERM until systemd's SIGKILL.
                    async with asyncio.timeout(max(interval, 0.5)):
                        resp = await call.read()
                    if resp is grpc.aio.EOF:
                        break
                    if resp.TTL <= 0:
                        log.warning("lease %x is gone in etcd; session lost", self.lease_id)
                        self.lost.set()
                        return
                    self.last_renewed = self._clock()
                    await asyncio.sleep(interval)
            except TimeoutError:
                if not self._closed:
                    self.client.failover(f"no keepalive answer for lease {self.lease_id:x} within "
                                         f"{max(interval, 0.5):.1f}s")
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, EtcdError) as error:
                # InvalidStateError: grpc.aio refuses writes once etcd has closed the stream.
                log.debug("keepalive for lease %x interrupted: %s", self.lease_id, error)
            except asyncio.CancelledError:
                if not closed_under_call():
                    raise
                log.debug("keepalive for lease %x: its connection was closed (failover)", self.lease_id)
            finally:
                call.cancel()
            if not self._closed:
                # etcd unreachable: retry soon; the lease may still be alive on the server.
                await asyncio.sleep(min(0.2, interval))

    async def close(self, revoke: bool = True) -> None:
        """Stop renewing and (by default) revoke the lease so its keys vanish now."""
        self._closed = True
        if revoke and not self.lost.is_set():
            with contextlib.suppress(EtcdError):
                await self.client.revoke(self.lease_id, timeout=2.0)
        self.lost.set()
