"""The local CA: what it issues, where, with which modes, and what it refuses to overwrite."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conveyor.errors import ConfigError
from conveyor.security import certs

NOW = 1_700_000_000.0


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(ext.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}
    return dns, ips


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask of 0, so a key left to the umask would come out world-readable."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_ca_is_a_self_signed_ca_valid_for_ten_years(tmp_path: Path) -> None:
    paths = certs.make_ca(tmp_path, now=NOW)
    assert paths == certs.CertPaths(tmp_path / "ca.pem", tmp_path / "ca.key")
    ca = load(paths.cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is True
    ca.verify_directly_issued_by(ca)
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3640) < lifetime < dt.timedelta(days=3660)
    start = dt.datetime.fromtimestamp(NOW, dt.UTC)
    assert ca.not_valid_before_utc <= start < ca.not_valid_before_utc + dt.timedelta(hours=1)


def test_server_cert_has_default_sans_and_is_signed_by_the_ca(tmp_path: Path) -> None:
    certs.make_ca(tmp_path)
    paths = certs.make_server_cert(tmp_path)
    cert, ca = load(paths.cert), load(tmp_path / "ca.pem")
    cert.verify_directly_issued_by(ca)
    assert sans(cert) == ({"localhost"}, {"127.0.0.1", "::1"})
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.not_valid_after_utc <= ca.not_valid_after_utc


def test_server_cert_hosts_become_dns_or_ip_sans(tmp_path: Path) -> None:
    certs.make_ca(tmp_path)
    hosts = ["broker.example.com", "10.0.0.7", "[2001:db8::1]", "Queue.Internal", " ", "10.0.0.7"]
    cert = load(certs.make_server_cert(tmp_path, hosts).cert)
    assert sans(cert) == ({"broker.example.com", "queue.internal"}, {"10.0.0.7", "2001:db8::1"})
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = ext.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("2001:db8::1") in ips


@pytest.mark.parametrize("bad", [["bad host"], ["http://x"], ["ünïcode.example"], [""], []])
def test_bad_hosts_are_refused(tmp_path: Path, bad: list[str]) -> None:
    certs.make_ca(tmp_path)
    with pytest.raises(ConfigError):
        certs.make_server_cert(tmp_path, bad)
    assert not (tmp_path / "server.pem").exists()
    assert not (tmp_path / "server.key").exists()


def test_client_cert_names_the_client(tmp_path: Path) -> None:
    certs.make_ca(tmp_path)
    paths = certs.make_client_cert(tmp_path, "worker-7")
    assert paths == certs.CertPaths(
        tmp_path / "client-worker-7.pem", tmp_path / "client-worker-7.key"
    )
    cert = load(paths.cert)
    cert.verify_directly_issued_by(load(tmp_path / "ca.pem"))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "worker-7"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert mode(paths.key) == 0o600


@pytest.mark.parametrize("name", ["", "../evil", "a/b", "-x", "x" * 65, "a b"])
def test_client_names_that_are_not_safe_file_names_are_refused(tmp_path: Path, name: str) -> None:
    certs.make_ca(tmp_path)
    with pytest.raises(ConfigError, match="client name"):
        certs.make_client_cert(tmp_path, name)


@pytest.mark.usefixtures("open_umask")
def test_private_keys_are_0600_and_certificates_readable(tmp_path: Path) -> None:
    certs.make_ca(tmp_path)
    certs.make_server_cert(tmp_path)
    certs.make_client_cert(tmp_path, "alice")
    for key in ("ca.key", "server.key", "client-alice.key"):
        assert mode(tmp_path / key) == 0o600, key
    for pem in ("ca.pem", "server.pem", "client-alice.pem"):
        assert mode(tmp_path / pem) == 0o644, pem


def test_issuing_without_a_ca_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="conveyor certs"):
        certs.make_server_cert(tmp_path)
    with pytest.raises(ConfigError):
        certs.make_client_cert(tmp_path, "alice")


@pytest.mark.parametrize("kind", ["ca", "server", "client"])
def test_nothing_is_overwritten_without_force(tmp_path: Path, kind: str) -> None:
    def make(force: bool) -> certs.CertPaths:
        if kind == "ca":
            return certs.make_ca(tmp_path, force)
        if kind == "server":
            return certs.make_server_cert(tmp_path, None, force)
        return certs.make_client_cert(tmp_path, "bob", force)

    ca = certs.make_ca(tmp_path)
    paths = ca if kind == "ca" else make(False)
    before = (paths.cert.read_bytes(), paths.key.read_bytes())
    with pytest.raises(ConfigError, match="already exists; pass --force"):
        make(False)
    assert (paths.cert.read_bytes(), paths.key.read_bytes()) == before
    make(True)
    assert paths.cert.read_bytes() != before[0]
    assert paths.key.read_bytes() != before[1]


@pytest.mark.usefixtures("open_umask")
def test_force_replaces_and_keeps_the_key_private(tmp_path: Path) -> None:
    certs.make_ca(tmp_path)
    paths = certs.make_server_cert(tmp_path)
    old_cert, old_key = paths.cert.read_bytes(), paths.key.read_bytes()
    paths.key.chmod(0o644)  # a loosened old key must not pass its mode on
    certs.make_server_cert(tmp_path, ["other.example"], force=True)
    assert paths.cert.read_bytes() != old_cert
    assert paths.key.read_bytes() != old_key
    assert mode(paths.key) == 0o600
    assert sans(load(paths.cert)) == ({"other.example"}, set())
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_ensure_creates_only_what_is_missing(tmp_path: Path) -> None:
    lines = certs.ensure_ca_and_server(tmp_path, ["localhost"])
    assert len(lines) == 2
    assert "CA" in lines[0] and "server" in lines[1]
    snapshot = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(snapshot) == {"ca.pem", "ca.key", "server.pem", "server.key"}

    assert certs.ensure_ca_and_server(tmp_path, ["localhost"]) == []
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == snapshot

    (tmp_path / "server.pem").unlink()
    (tmp_path / "server.key").unlink()
    lines = certs.ensure_ca_and_server(tmp_path)
    assert len(lines) == 1 and "server" in lines[0]
    assert (tmp_path / "ca.pem").read_bytes() == snapshot["ca.pem"]
    load(tmp_path / "server.pem").verify_directly_issued_by(load(tmp_path / "ca.pem"))


def test_ensure_refuses_a_server_cert_whose_ca_is_gone(tmp_path: Path) -> None:
    certs.ensure_ca_and_server(tmp_path)
    (tmp_path / "ca.pem").unlink()
    (tmp_path / "ca.key").unlink()
    with pytest.raises(ConfigError, match="CA that signed it"):
        certs.ensure_ca_and_server(tmp_path)
    assert not (tmp_path / "ca.pem").exists()


def test_ensure_refuses_half_a_pair(tmp_path: Path) -> None:
    certs.ensure_ca_and_server(tmp_path)
    (tmp_path / "server.key").unlink()
    with pytest.raises(ConfigError, match=r"found .*server\.pem but not .*server\.key"):
        certs.ensure_ca_and_server(tmp_path)
