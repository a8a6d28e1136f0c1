"""Token key files: Ed25519 key pairs as PEM files, and reading a directory of public keys.

``meshctl token keygen --dir D --kid K`` writes both files of a pair:

- ``D/K.key`` — the private key (PKCS#8 PEM, mode 0600): only the issuer needs it;
- ``D/K.pub`` — the public key (SubjectPublicKeyInfo PEM): what daemons trust.

Pure file and key handling (no etcd, no gRPC), shared by the daemons' key ring
(:mod:`mabeam.security.keys`) and ``meshctl``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mabeam.ids import ID_RE, ID_RULE

log = logging.getLogger("mabeam.security")


def public_pem(key: Ed25519PublicKey) -> bytes:
    """A public key as SubjectPublicKeyInfo PEM (the ``.pub`` file and etcd value format)."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def parse_public_key(pem: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM; ValueError for anything else."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as error:
        raise ValueError(f"not a PEM public key: {error}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The Ed25519 private key in a PKCS#8 PEM file; ValueError naming the file otherwise."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read the signing key {path}: {error.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path} is not a PEM private key: {error}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def write_keypair(directory: str | os.PathLike[str], kid: str) -> tuple[Path, Path]:
    """Generate a key pair as ``<kid>.key`` (0600) and ``<kid>.pub`` in ``directory``; refuses to overwrite."""
    if not ID_RE.match(kid):
        raise ValueError(f"key id {kid!r} is not valid: use {ID_RULE}")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    private_path, public_path = folder / f"{kid}.key", folder / f"{kid}.pub"
    if private_path.exists() or public_path.exists():
        raise ValueError(f"a key {kid!r} already exists in {folder}")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public_path.write_bytes(public_pem(key.public_key()))
    return private_path, public_path


def read_directory(directory: str | os.PathLike[str]) -> dict[str, Ed25519PublicKey]:
    """Every ``<kid>.pub`` of a directory (files that do not parse are logged and skipped)."""
    found: dict[str, Ed25519PublicKey] = {}
    folder = Path(directory)
    for path in sorted(folder.glob("*.pub")):
        kid = path.stem
        if not ID_RE.match(kid):
            log.warning("token key %s skipped: its name is not a valid key id (%s)", path, ID_RULE)
            continue
        try:
            found[kid] = parse_public_key(path.read_bytes())
        except (OSError, ValueError) as error:
            log.warning("token key %s skipped: %s", path, error)
    return found
