"""A local certificate authority: the CA, the broker's server certificate, client certificates.

All keys are EC P-256. The CA lives ten years; the certificates it issues live 825 days
(reissue the server certificate with ``conveyor certs --force``). Files in ``out_dir``::

    ca.pem  ca.key               the CA (keep ca.key secret; hand ca.pem to every client)
    server.pem  server.key       the broker's certificate, with the hosts as SANs
    client-NAME.pem/.key         a client certificate for mutual TLS (CN = NAME)

Keys are created with mode 0600 from the start (never chmod-ed after the fact), and no
existing file is replaced unless ``force`` is given.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conveyor.errors import ConfigError

DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 3650
LEAF_DAYS = 825
_BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock skew between hosts
_CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True, slots=True)
class CertPaths:
    """Where a certificate and its private key live."""

    cert: Path
    key: Path

    def exists(self) -> bool:
        return self.cert.exists() and self.key.exists()


def ca_paths(out_dir: Path) -> CertPaths:
    return CertPaths(Path(out_dir) / "ca.pem", Path(out_dir) / "ca.key")


def server_paths(out_dir: Path) -> CertPaths:
    return CertPaths(Path(out_dir) / "server.pem", Path(out_dir) / "server.key")


def client_paths(out_dir: Path, name: str) -> CertPaths:
    _check_client_name(name)
    return CertPaths(Path(out_dir) / f"client-{name}.pem", Path(out_dir) / f"client-{name}.key")


def make_ca(out_dir: Path, force: bool = False, *, now: float | None = None) -> CertPaths:
    """Create a self-signed CA in ``out_dir``; refuse to replace one unless ``force``."""
    paths = ca_paths(out_dir)
    _check_writable(paths, force)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Conveyor"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Conveyor local CA"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    not_before = _start(now)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    _write_pair(paths, cert, key, force)
    return paths


def make_server_cert(
    out_dir: Path,
    hosts: Sequence[str] | None = None,
    force: bool = False,
    *,
    now: float | None = None,
) -> CertPaths:
    """Issue the broker's certificate from the CA in ``out_dir``.

    Each host that parses as an IP address becomes an IP SAN, every other one a DNS SAN.
    ``hosts`` defaults to localhost, 127.0.0.1 and ::1.
    """
    paths = server_paths(out_dir)
    _check_writable(paths, force)
    sans = host_sans(DEFAULT_HOSTS if hosts is None else hosts)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _leaf_builder(out_dir, key, "Conveyor broker", ExtendedKeyUsageOID.SERVER_AUTH, now)
    builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(_load_ca_key(out_dir), hashes.SHA256())
    _write_pair(paths, cert, key, force)
    return paths


def make_client_cert(
    out_dir: Path, name: str, force: bool = False, *, now: float | None = None
) -> CertPaths:
    """Issue a client certificate (CN = ``name``) for mutual TLS from the CA in ``out_dir``."""
    paths = client_paths(out_dir, name)
    _check_writable(paths, force)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _leaf_builder(out_dir, key, name, ExtendedKeyUsageOID.CLIENT_AUTH, now)
    cert = builder.sign(_load_ca_key(out_dir), hashes.SHA256())
    _write_pair(paths, cert, key, force)
    return paths


def ensure_ca_and_server(
    out_dir: Path, hosts: Sequence[str] | None = None, *, now: float | None = None
) -> list[str]:
    """Create the CA and the server certificate if they are missing; touch nothing else.

    Returns one human-readable line per thing created (empty if all was there).
    """
    ca, server = ca_paths(out_dir), server_paths(out_dir)
    _check_whole(ca)
    _check_whole(server)
    created: list[str] = []
    if not ca.exists():
        if server.exists():
            raise ConfigError(
                f"{server.cert} exists but the CA that signed it ({ca.cert}) is missing; "
                "restore the CA, or delete server.pem and server.key to start afresh"
            )
        make_ca(out_dir, now=now)
        created.append(f"created CA certificate {ca.cert} (key {ca.key})")
    if not server.exists():
        make_server_cert(out_dir, hosts, now=now)
        names = ", ".join(DEFAULT_HOSTS if hosts is None else hosts)
        created.append(f"created server certificate {server.cert} for {names}")
    return created


def host_sans(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """Turn host names and IP addresses into subject alternative names (deduplicated)."""
    sans: list[x509.GeneralName] = []
    seen: set[str] = set()
    for raw in hosts:
        host = raw.strip().removeprefix("[").removesuffix("]")
        if not host or host.lower() in seen:
            continue
        seen.add(host.lower())
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not host.isascii() or any(c.isspace() or c in "/:@" for c in host):
            raise ConfigError(f"{raw!r} is neither an IP address nor a DNS name")
        sans.append(x509.DNSName(host.lower()))
    if not sans:
        raise ConfigError("a server certificate needs at least one host")
    return sans


def write_private_file(path: Path, data: bytes, force: bool = False) -> None:
    """Write ``data`` to a file created with mode 0600 (see :func:`_write_file`)."""
    _write_file(path, data, force, 0o600)


def _write_file(path: Path, data: bytes, force: bool, mode: int) -> None:
    """Write ``data`` to ``path``, creating the file with ``mode`` from the start.

    Without ``force`` the file must not exist (O_EXCL, so there is no race either); with
    ``force`` the data goes to a fresh temp file that then replaces ``path`` atomically.
    """
    target = path.with_name(f".{path.name}.{os.getpid()}.tmp") if force else path
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, mode)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; pass --force to replace it") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if force:
            os.replace(target, path)
    except BaseException:
        if force:
            target.unlink(missing_ok=True)
        raise


_O_BINARY: int = getattr(os, "O_BINARY", 0)


def _check_client_name(name: str) -> None:
    if not _CLIENT_NAME.match(name):
        raise ConfigError(
            f"client name {name!r} must be 1-64 letters, digits, '_', '.', '@' or '-' "
            "and start with a letter or digit"
        )


def _check_whole(paths: CertPaths) -> None:
    """Refuse half a pair: a certificate without its key or the other way round."""
    if paths.cert.exists() != paths.key.exists():
        have, lack = (paths.cert, paths.key) if paths.cert.exists() else (paths.key, paths.cert)
        raise ConfigError(f"found {have} but not {lack}; restore it or delete {have}")


def _check_writable(paths: CertPaths, force: bool) -> None:
    if force:
        return
    for path in (paths.cert, paths.key):
        if path.exists():
            raise ConfigError(f"{path} already exists; pass --force to replace it")


def _start(now: float | None) -> dt.datetime:
    ts = time.time() if now is None else now
    return dt.datetime.fromtimestamp(ts, dt.UTC) - _BACKDATE


def _load_ca(out_dir: Path) -> x509.Certificate:
    path = ca_paths(out_dir).cert
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"no CA certificate at {path}; run `conveyor certs` first") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM certificate: {exc}") from None


def _load_ca_key(out_dir: Path) -> ec.EllipticCurvePrivateKey:
    path = ca_paths(out_dir).key
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigError(f"no CA key at {path}; it is needed to issue certificates") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path} is not an EC key made by `conveyor certs`")
    return key


def _leaf_builder(
    out_dir: Path,
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    usage: x509.ObjectIdentifier,
    now: float | None,
) -> x509.CertificateBuilder:
    ca = _load_ca(out_dir)
    not_before = _start(now)
    not_after = min(not_before + dt.timedelta(days=LEAF_DAYS), ca.not_valid_after_utc)
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )


def _write_pair(
    paths: CertPaths, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, force: bool
) -> None:
    paths.key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private_file(paths.key, key_pem, force)
    _write_file(paths.cert, cert.public_bytes(serialization.Encoding.PEM), force, 0o644)
