"""A certificate authority and per-node certificates for mTLS on gRPC (``mabeam certs``).

``mabeam certs --dir D --node node-1 --node node-2 --host 127.0.0.1 --client ops`` writes::

    D/ca.crt  D/ca.key                 the CA (keep ca.key off the nodes)
    D/node-1.crt  D/node-1.key         one certificate per node: server and client use, its names
    D/ops.crt  D/ops.key               a client certificate (meshctl, SDKs, the load generator)

Every daemon of a node serves with the node's certificate and requires clients to present
one that chains to ``ca.crt`` (``[security] tls_cert/tls_key/tls_ca``). Keys are ECDSA P-256
(every TLS stack speaks it); certificates carry subjectAltNames for the node's names and
addresses, since gRPC verifies the name a client dialled. Good for a dev cluster or a small
deployment; a larger one brings its own PKI (the daemons only read PEM files).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mabeam.ids import ID_RE, ID_RULE

DEFAULT_DAYS = 825


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mabeam"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_ca(common_name: str = "mabeam dev CA", days: int = DEFAULT_DAYS) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA key and certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str,
              hosts: Iterable[str] = (), days: int = DEFAULT_DAYS) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key and a certificate signed by the CA, for server and client use, naming ``common_name`` and ``hosts``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                              critical=False)
               .add_extension(_san([common_name, *hosts]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
    return key, builder.sign(ca_key, hashes.SHA256())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def load_ca(directory: str | os.PathLike[str]) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The CA of a directory written by :func:`write_pki` (to sign more certificates later)."""
    folder = Path(directory)
    key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{folder / 'ca.key'} is not an EC private key")
    return key, x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())


def write_pki(directory: str | os.PathLike[str], names: Iterable[str] | Mapping[str, Iterable[str]],
              hosts: Iterable[str] = ("127.0.0.1", "localhost"), days: int = DEFAULT_DAYS
              ) -> dict[str, tuple[Path, Path]]:
    """Write (or reuse) ``ca.crt``/``ca.key`` and a ``<name>.crt``/``<name>.key`` per name; returns name -> (crt, key).

    Every certificate names its own name plus ``hosts`` (the addresses clients dial), or, when ``names``
    maps each name to its own addresses, those.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "ca.key").exists():
        ca_key, ca_cert = load_ca(folder)
    else:
        ca_key, ca_cert = make_ca(days=days)
        _write_key(folder / "ca.key", ca_key)
        _write_cert(folder / "ca.crt", ca_cert)
    written: dict[str, tuple[Path, Path]] = {}
    host_list = list(hosts)
    own = dict(names) if isinstance(names, Mapping) else {name: host_list for name in names}
    for name, addresses in own.items():
        if not ID_RE.match(name):
            raise ValueError(f"certificate name {name!r} is not valid: use {ID_RULE}")
        key, cert = make_cert(ca_key, ca_cert, name, list(addresses), days)
        crt_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
        _write_key(key_path, key)
        _write_cert(crt_path, cert)
        written[name] = (crt_path, key_path)
    return written
