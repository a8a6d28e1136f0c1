"""Bearer tokens: Ed25519-signed JWTs (``alg: EdDSA``) that name a tenant and roles.

A token is what a client sends in the ``authorization`` metadata of every request
(``Bearer <token>``). Its header names the signing key (``kid``); its claims are::

    {"iss": "mabeam", "aud": "mabeam:<cluster>", "sub": "<principal>", "tenant": "<tenant>",
     "roles": ["operator"], "iat": <s>, "exp": <s>, "jti": "<random id>"}

Why Ed25519 (asymmetric) and not HMAC: the daemons verify with public keys only, so a
compromised node, a leaked config or an etcd reader cannot mint tokens — only whoever
holds the private key (the issuer: ``meshctl token issue``). Ed25519 has no parameters to
get wrong, small keys and fast verification. PyJWT (with ``cryptography``) does the
encoding and the signature; this module adds the mabeam claims, the key ring lookup by
``kid``, expiry on an injected clock, and a cache of verified tokens so a client that
reuses its token pays the signature check once (see :class:`TokenVerifier`).

Roles are ordered: each grants what the ones before it grant.

============ ===========================================================================
``reader``    read its tenant's state (lookups, lists, gets, watches, balances, usage)
``agent``     act as an agent: send and call, register names, join groups, bid, vote,
              trade, set variables, transfer credit, call models, feed runs
``operator``  manage its tenant: spawn and stop agents, create and close instances and
              variables, deposit credit, start and cancel runs
``admin``     everything, in any tenant (naming another tenant in a request), and quotas
============ ===========================================================================
"""

from __future__ import annotations

import enum
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mabeam.errors import ServiceError
from mabeam.ids import ID_RE, ID_RULE

ALGORITHM = "EdDSA"
ISSUER = "mabeam"
#: Longest token accepted in metadata (a normal one is ~400 bytes).
MAX_TOKEN_BYTES = 8192
#: Seconds of clock skew tolerated between the issuer and a daemon (iat/exp).
DEFAULT_LEEWAY_S = 5.0


class Role(enum.IntEnum):
    """The roles, in the order of what they grant (a higher role grants everything a lower one does)."""

    READER = 1
    AGENT = 2
    OPERATOR = 3
    ADMIN = 4

    @classmethod
    def parse(cls, name: str) -> Role:
        """The role named ``name`` (``reader``, ``agent``, ``operator``, ``admin``); ValueError otherwise."""
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown role {name!r}; roles are {', '.join(r.label for r in cls)}") from None

    @property
    def label(self) -> str:
        """The role's name as tokens carry it."""
        return self.name.lower()


def audience(cluster: str) -> str:
    """The ``aud`` claim of a cluster's tokens: a token of one cluster is refused by another's daemons."""
    return f"mabeam:{cluster}"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the verified claims of a token."""

    subject: str
    tenant: str
    roles: frozenset[Role]
    expires_at: float
    key_id: str = ""
    token_id: str = ""

    @property
    def role(self) -> Role:
        """The highest role the token carries."""
        return max(self.roles)

    def grants(self, needed: Role) -> bool:
        """True when the token's highest role is at least ``needed``."""
        return self.role >= needed

    @property
    def is_admin(self) -> bool:
        """Admins act in any tenant."""
        return Role.ADMIN in self.roles


class TokenError(ServiceError):
    """The request's credential is missing or does not verify (UNAUTHENTICATED; reason TOKEN_*)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "TOKEN_INVALID"


def missing_token() -> TokenError:
    """No ``authorization: Bearer <token>`` on the request."""
    return TokenError(message="this cluster requires a token: send 'authorization: Bearer <token>' (gRPC metadata "
                              "or HTTP header; meshctl token issue makes one)", reason="TOKEN_MISSING")


class KeyLookup(Protocol):
    """Where verification keys come from (:class:`mabeam.security.keys.KeyRing`)."""

    @property
    def generation(self) -> int:
        """Changes whenever the set of keys changes (cached verifications are then dropped)."""
        ...

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        """The public key with id ``kid``, or None."""
        ...


def issue(signing_key: Ed25519PrivateKey, kid: str, *, cluster: str, tenant: str, roles: Iterable[str | Role],
          subject: str, ttl_s: float, now: float | None = None) -> str:
    """A signed token for ``subject`` in ``tenant`` with ``roles``, valid for ``ttl_s`` seconds from ``now``."""
    if not ID_RE.match(kid):
        raise ValueError(f"key id {kid!r} is not valid: use {ID_RULE}")
    if not ID_RE.match(tenant):
        raise ValueError(f"tenant {tenant!r} is not valid: use {ID_RULE}")
    parsed = sorted({r if isinstance(r, Role) else Role.parse(r) for r in roles})
    if not parsed:
        raise ValueError("a token needs at least one role")
    if not subject or len(subject) > 256:
        raise ValueError("subject: 1-256 characters")
    if not 0 < ttl_s <= 366 * 86400:
        raise ValueError("ttl: more than 0 s and at most a year")
    issued = int(time.time() if now is None else now)
    claims = {"iss": ISSUER, "aud": audience(cluster), "sub": subject, "tenant": tenant,
              "roles": [r.label for r in parsed], "iat": issued, "exp": int(issued + ttl_s),
              "jti": secrets.token_hex(8)}
    return jwt.encode(claims, signing_key, algorithm=ALGORITHM, headers={"kid": kid})


def _claims_principal(claims: dict[str, Any], kid: str) -> Principal:
    tenant, subject, roles = claims.get("tenant"), claims.get("sub"), claims.get("roles")
    if not isinstance(tenant, str) or not ID_RE.match(tenant):
        raise TokenError(message="the token's tenant claim is missing or not a valid tenant id")
    if not isinstance(subject, str) or not subject:
        raise TokenError(message="the token's sub claim is missing")
    if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
        raise TokenError(message="the token's roles claim must be a non-empty list of role names")
    try:
        parsed = frozenset(Role.parse(r) for r in roles)
    except ValueError as error:
        raise TokenError(message=f"the token's roles claim: {error}") from None
    expires = claims.get("exp")
    if not isinstance(expires, int | float):
        raise TokenError(message="the token has no exp claim")
    return Principal(subject, tenant, parsed, float(expires), kid, str(claims.get("jti", "")))


class TokenVerifier:
    """Verifies tokens against a key ring for one cluster, with ``clock`` for expiry (injected in tests).

    Verified tokens are cached (up to ``cache_size``, keyed by the token string) until the key ring
    changes; each use still checks expiry against the clock. A cache hit is one dict lookup instead of
    an Ed25519 verification (~60 µs here) plus JSON parsing.
    """

    def __init__(self, keys: KeyLookup, cluster: str, *, clock: Callable[[], float] = time.time,
                 leeway_s: float = DEFAULT_LEEWAY_S, cache_size: int = 4096) -> None:
        self.keys = keys
        self.audience = audience(cluster)
        self.clock = clock
        self.leeway_s = leeway_s
        self.cache_size = cache_size
        self._cache: dict[str, Principal] = {}
        self._generation = keys.generation

    def verify(self, token: str) -> Principal:
        """The principal a token names; TokenError (TOKEN_INVALID or TOKEN_EXPIRED) when it does not verify."""
        if self._generation != self.keys.generation:  # a key was added or removed: verify everything again
            self._cache.clear()
            self._generation = self.keys.generation
        principal = self._cache.get(token)
        if principal is None:
            principal = self._verify(token)
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            self._cache[token] = principal
        if self.clock() > principal.expires_at + self.leeway_s:
            self._cache.pop(token, None)
            raise TokenError(message=f"the token expired at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(principal.expires_at))}; "
                                     "get a new one", reason="TOKEN_EXPIRED")
        return principal

    def _verify(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenError(message=f"the token is longer than {MAX_TOKEN_BYTES} bytes")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise TokenError(message=f"the token is not a JWT: {error}") from None
        kid = header.get("kid")
        if header.get("alg") != ALGORITHM:
            raise TokenError(message=f"the token's algorithm is {header.get('alg')!r}; this cluster accepts {ALGORITHM}")
        if not isinstance(kid, str):
            raise TokenError(message="the token names no key (kid)")
        key = self.keys.public_key(kid)
        if key is None:
            raise TokenError(message=f"the token's key {kid!r} is not (or no longer) trusted by this cluster")
        try:
            # Expiry is checked by verify() on the injected clock (and again on every cached use).
            claims = jwt.decode(token, key, algorithms=[ALGORITHM], audience=self.audience, issuer=ISSUER,
                                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                                         "require": ["exp", "iat", "sub", "aud", "iss"]})
        except jwt.InvalidAudienceError:
            raise TokenError(message=f"the token is for another cluster (this one is {self.audience!r})") from None
        except jwt.InvalidSignatureError:
            raise TokenError(message="the token's signature does not verify") from None
        except jwt.PyJWTError as error:
            raise TokenError(message=f"the token does not verify: {error}") from None
        issued = claims.get("iat")
        if isinstance(issued, int | float) and issued > self.clock() + self.leeway_s:
            raise TokenError(message="the token is issued in the future (check the issuer's clock)")
        return _claims_principal(claims, kid)
