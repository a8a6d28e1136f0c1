"""Tokens: issue and verify, expiry on an injected clock, rotation by key id, every way a token is refused."""

from __future__ import annotations

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mabeam.security.keyfiles import load_private_key, read_directory, write_keypair
from mabeam.security.keys import KeyRing
from mabeam.security.tokens import Role, TokenError, TokenVerifier, issue

NOW = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(key: Ed25519PrivateKey, kid: str = "k1", **claims: object) -> str:
    fields: dict[str, object] = {"cluster": "prod", "tenant": "acme", "roles": ["agent"], "subject": "alice",
                                 "ttl_s": 60.0, "now": NOW}
    fields.update(claims)
    return issue(key, kid, **fields)  # type: ignore[arg-type]


def refusal(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(TokenError) as caught:
        verifier.verify(token)
    assert caught.value.code.name == "UNAUTHENTICATED"
    return caught.value.reason


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_a_token_names_its_tenant_subject_and_roles(key: Ed25519PrivateKey) -> None:
    verifier = TokenVerifier(KeyRing({"k1": key.public_key()}), "prod", clock=Clock())
    principal = verifier.verify(make(key, roles=["reader", "operator"]))
    assert (principal.tenant, principal.subject, principal.key_id) == ("acme", "alice", "k1")
    assert principal.role is Role.OPERATOR and principal.grants(Role.AGENT) and not principal.grants(Role.ADMIN)
    assert not principal.is_admin and principal.expires_at == NOW + 60
    header = jwt.get_unverified_header(make(key))
    assert header["alg"] == "EdDSA" and header["kid"] == "k1"


def test_expiry_follows_the_clock_even_for_a_cached_token(key: Ed25519PrivateKey) -> None:
    clock = Clock()
    verifier = TokenVerifier(KeyRing({"k1": key.public_key()}), "prod", clock=clock, leeway_s=5)
    token = make(key)
    verifier.verify(token)
    clock.now = NOW + 64  # inside the leeway
    verifier.verify(token)
    clock.now = NOW + 66
    assert refusal(verifier, token) == "TOKEN_EXPIRED"


def test_refusals_name_their_reason(key: Ed25519PrivateKey) -> None:
    verifier = TokenVerifier(KeyRing({"k1": key.public_key()}), "prod", clock=Clock())
    other = Ed25519PrivateKey.generate()
    assert refusal(verifier, make(other)) == "TOKEN_INVALID"  # right kid, wrong signature
    assert refusal(verifier, make(key, kid="k9")) == "TOKEN_INVALID"  # unknown key
    assert refusal(verifier, make(key, cluster="staging")) == "TOKEN_INVALID"  # another cluster's token
    assert refusal(verifier, "not-a-token") == "TOKEN_INVALID"
    assert refusal(verifier, make(key, now=NOW + 3600)) == "TOKEN_INVALID"  # issued in the future
    good = make(key)
    head, body, signature = good.split(".")
    forged = jwt.encode({"sub": "alice", "tenant": "globex", "roles": ["admin"], "aud": "mabeam:prod",
                         "iss": "mabeam", "iat": int(NOW), "exp": int(NOW) + 60}, "s" * 32, algorithm="HS256",
                        headers={"kid": "k1"})
    assert refusal(verifier, forged) == "TOKEN_INVALID"  # alg confusion: HMAC with a guessed secret
    assert refusal(verifier, f"{head}.{body[:-4]}AAAA.{signature}") == "TOKEN_INVALID"  # body changed


def test_claims_are_checked_when_issuing() -> None:
    key = Ed25519PrivateKey.generate()
    for bad in ({"tenant": "a/b"}, {"roles": []}, {"roles": ["root"]}, {"subject": ""}, {"ttl_s": 0}):
        with pytest.raises(ValueError):
            make(key, **bad)


def test_rotation_two_keys_at_once_then_the_old_one_removed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    write_keypair(tmp_path, "old")
    write_keypair(tmp_path, "new")
    ring = KeyRing()
    ring.load_directory(tmp_path)
    verifier = TokenVerifier(ring, "prod", clock=Clock())
    old_token = make(load_private_key(tmp_path / "old.key"), kid="old")
    new_token = make(load_private_key(tmp_path / "new.key"), kid="new")
    assert verifier.verify(old_token).key_id == "old" and verifier.verify(new_token).key_id == "new"
    (tmp_path / "old.pub").unlink()
    ring.load_directory(tmp_path)
    assert refusal(verifier, old_token) == "TOKEN_INVALID"  # the cache was dropped with the key
    assert verifier.verify(new_token).key_id == "new"


def test_key_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    private, public = write_keypair(tmp_path, "k1")
    assert private.stat().st_mode & 0o777 == 0o600
    with pytest.raises(ValueError, match="already exists"):
        write_keypair(tmp_path, "k1")
    (tmp_path / "junk.pub").write_text("not a key")
    (tmp_path / "bad name!.pub").write_bytes(public.read_bytes())
    assert sorted(read_directory(tmp_path)) == ["k1"]
    with pytest.raises(ValueError, match="not a PEM private key"):
        load_private_key(public)
