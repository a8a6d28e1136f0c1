"""``mabeam certs`` and ``mabeam keys``: the files and etcd keys a secured cluster needs (docs/security.md).

::

    mabeam certs --dir /etc/mabeam/tls --node host-a=10.0.0.5,host-a.internal --node host-b=10.0.0.6 --client ops
    mabeam keys publish --etcd 10.0.0.11:2379 --cluster prod --kid 2027-q1 --public issuer/2027-q1.pub
    mabeam keys list --etcd 10.0.0.11:2379 --cluster prod
    mabeam keys withdraw --etcd 10.0.0.11:2379 --cluster prod --kid 2026-q4
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mabeam import keys as etcd_keys
from mabeam.etcd.client import EtcdClient, EtcdError
from mabeam.security.certs import DEFAULT_DAYS, write_pki
from mabeam.security.keyfiles import parse_public_key
from mabeam.security.keys import publish, withdraw

DEFAULT_HOSTS = ("127.0.0.1", "localhost")


def cmd_certs(args: argparse.Namespace) -> int:
    """Write (or reuse) the CA and a certificate per node and client."""
    names: dict[str, list[str]] = {}
    for spec in args.node:
        name, _, addresses = spec.partition("=")
        names[name] = [a for a in addresses.split(",") if a] or list(DEFAULT_HOSTS)
    for client in args.client:
        names[client] = list(DEFAULT_HOSTS)
    if not names:
        print("mabeam certs: name at least one --node or --client", file=sys.stderr)
        return 2
    try:
        written = write_pki(args.dir, names, days=args.days)
    except ValueError as error:
        print(f"mabeam certs: {error}", file=sys.stderr)
        return 2
    print(f"CA        {Path(args.dir) / 'ca.crt'} (keep ca.key off the nodes)")
    for name, (crt, key) in written.items():
        print(f"{name:9s} {crt}  {key}  for {', '.join(names[name])}")
    return 0


async def _keys(args: argparse.Namespace, public: Ed25519PublicKey | None) -> int:
    etcd = EtcdClient(args.etcd.split(","))
    try:
        if args.keys_command == "publish":
            assert public is not None
            await publish(etcd, args.cluster, args.kid, public)
            print(f"published {args.kid}: every daemon with token_keys_etcd trusts it within a moment")
        elif args.keys_command == "withdraw":
            gone = await withdraw(etcd, args.cluster, args.kid)
            print(f"withdrew {args.kid}" if gone else f"no key {args.kid} was published")
        else:
            kvs, _ = await etcd.get_prefix(etcd_keys.token_keys(args.cluster))
            prefix = len(etcd_keys.token_keys(args.cluster))
            for kv in kvs:
                print(kv.key[prefix:].decode())
        return 0
    except EtcdError as error:
        print(f"mabeam keys: etcd: {error}", file=sys.stderr)
        return 1
    finally:
        await etcd.close()


def cmd_keys(args: argparse.Namespace) -> int:
    """Publish, withdraw or list the token keys in etcd."""
    public = None
    if args.keys_command == "publish":
        try:
            public = parse_public_key(Path(args.public).read_bytes())
        except (OSError, ValueError) as error:
            print(f"mabeam keys: {args.public}: {error}", file=sys.stderr)
            return 2
    return asyncio.run(_keys(args, public))


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``certs`` and ``keys`` to the ``mabeam`` command."""
    certs = sub.add_parser("certs", help="make a CA and certificates for mTLS (docs/security.md)")
    certs.add_argument("--dir", required=True, help="where ca.crt, ca.key and <name>.crt/.key go")
    certs.add_argument("--node", action="append", default=[],
                       help="NAME[=ADDRESS,...]: a node's certificate, for its addresses (default 127.0.0.1,localhost)")
    certs.add_argument("--client", action="append", default=[], help="NAME: a client certificate (repeatable)")
    certs.add_argument("--days", type=int, default=DEFAULT_DAYS, help=f"validity (default {DEFAULT_DAYS})")
    certs.set_defaults(func=cmd_certs)
    keys = sub.add_parser("keys", help="token keys in etcd: publish, withdraw, list")
    verbs = keys.add_subparsers(dest="keys_command", required=True)
    for name, text in (("publish", "trust a public key cluster-wide"), ("withdraw", "stop trusting a key"),
                       ("list", "the published key ids")):
        verb = verbs.add_parser(name, help=text)
        verb.add_argument("--etcd", required=True, help="etcd HOST:PORT[,...]")
        verb.add_argument("--cluster", default="default")
        if name != "list":
            verb.add_argument("--kid", required=True)
        if name == "publish":
            verb.add_argument("--public", required=True, help="the <kid>.pub file")
        verb.set_defaults(func=cmd_keys)
