"""The ring of token public keys a daemon trusts, by key id, from a directory and/or etcd.

Key files are :mod:`mabeam.security.keyfiles`. A daemon's :class:`KeyRing` merges
its sources — every ``*.pub`` file of its ``[security] token_keys`` directory (re-read every few seconds, so a rotation is
dropping a file in and later removing the old one) and, with
``token_keys_etcd = true``, every key under ``/mabeam/<cluster>/security/token_keys/<kid>``
(watched; ``mabeam keys publish`` puts one there). Several keys are valid at once: a
token names its key (``kid``), so during a rotation tokens of the old key and of the new
one both verify until the old key is removed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mabeam import keys as etcd_keys
from mabeam.etcd.client import EtcdClient, EtcdError
from mabeam.ids import ID_RE, ID_RULE
from mabeam.security.keyfiles import parse_public_key, public_pem, read_directory

log = logging.getLogger("mabeam.security")

#: How often a key directory is looked at again for new or removed keys, seconds.
DIRECTORY_POLL_S = 2.0


class KeyRing:
    """The public keys a daemon trusts, by key id, merged from named sources (a directory, etcd).

    ``generation`` changes whenever the merged set changes, which drops the verifier's cache: a
    removed key stops verifying at once, even for tokens verified before.
    """

    def __init__(self, keys: Mapping[str, Ed25519PublicKey] | None = None) -> None:
        self._sources: dict[str, dict[str, Ed25519PublicKey]] = {}
        self._merged: dict[str, Ed25519PublicKey] = {}
        self.generation = 0
        if keys:
            self.set_source("static", keys)

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        """The trusted key with id ``kid``, or None."""
        return self._merged.get(kid)

    @property
    def key_ids(self) -> list[str]:
        """The trusted key ids, sorted."""
        return sorted(self._merged)

    def set_source(self, source: str, keys: Mapping[str, Ed25519PublicKey]) -> None:
        """Replace the keys one source contributes (a directory read, etcd's current keys)."""
        self._sources[source] = dict(keys)
        merged: dict[str, Ed25519PublicKey] = {}
        for contributed in self._sources.values():
            merged.update(contributed)
        if {k: public_pem(v) for k, v in merged.items()} != {k: public_pem(v) for k, v in self._merged.items()}:
            self._merged = merged
            self.generation += 1
            log.info("token keys now trusted: %s", ", ".join(sorted(merged)) or "(none)")

    def load_directory(self, directory: str | os.PathLike[str]) -> None:
        """Trust exactly the ``*.pub`` keys of ``directory`` (as the source "dir")."""
        self.set_source("dir", read_directory(directory))

    async def follow_directory(self, directory: str | os.PathLike[str], period: float = DIRECTORY_POLL_S) -> None:
        """Re-read ``directory`` every ``period`` seconds, until cancelled (rotation by adding/removing files)."""
        while True:
            await asyncio.sleep(period)
            try:
                keys = await asyncio.to_thread(read_directory, directory)
            except OSError as error:
                log.warning("cannot read the token key directory %s: %s", directory, error)
                continue
            self.set_source("dir", keys)

    async def follow_etcd(self, etcd: EtcdClient, cluster: str) -> None:
        """Trust the keys under the cluster's ``security/token_keys/`` prefix, following changes until cancelled.

        etcd going away keeps the keys last seen (requests keep verifying); the loop reads everything again
        and resumes watching when it is back.
        """
        prefix = etcd_keys.token_keys(cluster)
        while True:
            try:
                kvs, revision = await etcd.get_prefix(prefix)
                current: dict[str, Ed25519PublicKey] = {}
                for kv in kvs:
                    self._etcd_key(current, prefix, kv.key, kv.value)
                self.set_source("etcd", current)
                async for batch in etcd.watch_prefix(prefix, revision + 1):
                    for event in batch.events:
                        kid = event.kv.key[len(prefix):].decode(errors="replace")
                        if event.kind == "delete":
                            current.pop(kid, None)
                        else:
                            self._etcd_key(current, prefix, event.kv.key, event.kv.value)
                    self.set_source("etcd", current)
            except EtcdError as error:
                log.debug("token keys in etcd: %s; reading again shortly", error)
                await asyncio.sleep(0.5)

    @staticmethod
    def _etcd_key(into: dict[str, Ed25519PublicKey], prefix: bytes, key: bytes, value: bytes) -> None:
        kid = key[len(prefix):].decode(errors="replace")
        if not ID_RE.match(kid):
            log.warning("token key %r in etcd skipped: not a valid key id", kid)
            return
        try:
            into[kid] = parse_public_key(value)
        except ValueError as error:
            log.warning("token key %r in etcd skipped: %s", kid, error)


async def publish(etcd: EtcdClient, cluster: str, kid: str, public_key: Ed25519PublicKey) -> None:
    """Put a public key into etcd, where every daemon with ``token_keys_etcd`` trusts it within a moment."""
    if not ID_RE.match(kid):
        raise ValueError(f"key id {kid!r} is not valid: use {ID_RULE}")
    await etcd.put(etcd_keys.token_key(cluster, kid), public_pem(public_key))


async def withdraw(etcd: EtcdClient, cluster: str, kid: str) -> bool:
    """Remove a key from etcd (the end of a rotation); True when it was there."""
    return await etcd.delete(etcd_keys.token_key(cluster, kid)) > 0
