"""``meshctl token keygen | issue | show`` and ``meshctl tenant usage | quota``: tokens and tenants.

Tokens (docs/security.md)::

    meshctl token keygen --dir ./keys --kid k1          # keys/k1.key (private, 0600) and keys/k1.pub
    meshctl token issue --key ./keys/k1.key --cluster prod --tenant acme --role operator --subject ci --ttl 8h
    meshctl token show "$MABEAM_TOKEN"                   # the claims (unverified), to see what a token says

Daemons trust ``k1.pub`` through their ``[security] token_keys`` directory (or etcd:
``mabeam keys publish``). The token goes into ``MABEAM_TOKEN`` or ``--token``.

Tenants::

    meshctl tenant usage [--tenant T]                    # quotas and current use
    meshctl tenant quota acme --max-agents 100 --max-instances 20 --max-messages-per-second 5000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jwt
from rich.table import Table

from mabeam.security.keyfiles import load_private_key, write_keypair
from mabeam.security.tokens import Role, issue
from mabeam.v1 import mesh_pb2
from mabeam_client.mesh import MeshClient
from mabeam_client.output import emit, to_dict

QUOTA_FIELDS = ("max_agents", "max_mailbox", "max_concurrent_runs", "max_messages_per_second",
                "max_bytes_per_second", "max_instances", "model_max_tokens", "model_max_cost_nusd")


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``8h`` or ``30d``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 3600, 15m, 8h, 30d)") from None


def cmd_token_keygen(args: argparse.Namespace) -> int:
    try:
        private, public = write_keypair(args.dir, args.kid)
    except ValueError as error:
        print(f"meshctl: {error}", file=sys.stderr)
        return 1
    emit(args, {"kid": args.kid, "private_key": str(private), "public_key": str(public)},
         text=f"wrote {private} (keep it with the issuer only) and {public} (give it to the daemons: "
              f"\\[security] token_keys, or `mabeam keys publish`)")
    return 0


def cmd_token_issue(args: argparse.Namespace) -> int:
    try:
        key = load_private_key(args.key)
        kid = args.kid or Path(args.key).stem
        token = issue(key, kid, cluster=args.cluster, tenant=args.tenant, roles=args.role or ["reader"],
                      subject=args.subject, ttl_s=args.ttl)
    except ValueError as error:
        print(f"meshctl: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"token": token, "kid": kid, "tenant": args.tenant, "roles": args.role or ["reader"],
                          "expires_unix": int(time.time() + args.ttl)}))
    else:
        print(token)
    return 0


def cmd_token_show(args: argparse.Namespace) -> int:
    try:
        header = jwt.get_unverified_header(args.token)
        claims = jwt.decode(args.token, options={"verify_signature": False})
    except jwt.PyJWTError as error:
        print(f"meshctl: not a token: {error}", file=sys.stderr)
        return 1
    data = {"header": header, "claims": claims}
    expires = claims.get("exp")
    left = f", expires in {expires - time.time():.0f} s" if isinstance(expires, int | float) else ""
    emit(args, data, text=f"{claims.get('sub')} in tenant {claims.get('tenant')} as {', '.join(claims.get('roles', []))} "
                          f"(key {header.get('kid')}, cluster {claims.get('aud')}{left}); not verified here")
    return 0


async def cmd_tenant_usage(args: argparse.Namespace) -> int:
    async with MeshClient(args.endpoint) as mesh:
        usage = await mesh.tenant_usage(args.tenant)
    table = Table("quota", "used", "limit", "counted", title=f"tenant {usage.tenant}")
    for item in usage.usage:
        table.add_row(item.quota, f"{item.used:g}", f"{item.limit:g}" if item.limit else "unlimited",
                      "exact, cluster-wide" if item.exact else "rate on this node")
    emit(args, to_dict(usage), table)
    return 0


async def cmd_tenant_quota(args: argparse.Namespace) -> int:
    quota = mesh_pb2.TenantQuota(tenant=args.tenant, **{f: getattr(args, f) for f in QUOTA_FIELDS
                                                       if getattr(args, f) is not None})
    async with MeshClient(args.endpoint) as mesh:
        saved = await mesh.set_tenant_quota(quota)
    limits = ", ".join(f"{f}={getattr(saved, f):g}" for f in QUOTA_FIELDS if getattr(saved, f)) or "no limits"
    emit(args, to_dict(saved), text=f"tenant {saved.tenant}: {limits}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``token keygen|issue|show`` and ``tenant usage|quota`` to meshctl."""
    token = sub.add_parser("token", help="bearer tokens: make a signing key, issue a token, show one")
    verbs = token.add_subparsers(dest="token_command", required=True)
    keygen = verbs.add_parser("keygen", help="write an Ed25519 key pair (<kid>.key, <kid>.pub)")
    keygen.add_argument("--dir", required=True, help="directory to write the pair into")
    keygen.add_argument("--kid", required=True, help="key id (named in every token it signs)")
    keygen.set_defaults(func=cmd_token_keygen)
    issuing = verbs.add_parser("issue", help="print a signed token")
    issuing.add_argument("--key", required=True, help="the private key file (<kid>.key)")
    issuing.add_argument("--kid", default="", help="key id (default: the key file's name)")
    issuing.add_argument("--cluster", default="default", help="the cluster the token is for (its audience)")
    issuing.add_argument("--tenant", default="default", help="the tenant the token acts in")
    issuing.add_argument("--role", action="append", choices=[r.label for r in Role],
                         help="a role (repeatable; default reader)")
    issuing.add_argument("--subject", default="meshctl", help="who the token names (audit lines show it)")
    issuing.add_argument("--ttl", type=parse_duration, default=3600.0, help="lifetime: 3600, 15m, 8h, 30d")
    issuing.set_defaults(func=cmd_token_issue)
    show = verbs.add_parser("show", help="print a token's claims (not verified)")
    show.add_argument("token")
    show.set_defaults(func=cmd_token_show)

    tenant = sub.add_parser("tenant", help="tenants: quotas and usage")
    tverbs = tenant.add_subparsers(dest="tenant_command", required=True)
    usage = tverbs.add_parser("usage", help="a tenant's quotas and current use")
    usage.add_argument("--tenant", default="", help="default: the token's tenant (another needs admin)")
    usage.set_defaults(func=cmd_tenant_usage)
    setq = tverbs.add_parser("quota", help="set a tenant's quotas (admin; limits not given are unlimited)")
    setq.add_argument("tenant")
    for field in QUOTA_FIELDS:
        kind = float if field.endswith("per_second") else int
        setq.add_argument("--" + field.replace("_", "-"), dest=field, type=kind, default=None)
    setq.set_defaults(func=cmd_tenant_quota)
    for p in (keygen, issuing, show, usage, setq):
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
