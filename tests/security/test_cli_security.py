"""``conveyor certs`` and ``conveyor token``, run through click's CliRunner."""

from __future__ import annotations

import re
import stat
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from cryptography import x509

from conveyor.cli._util import parse_duration
from conveyor.cli.certs import certs_command
from conveyor.cli.tokens import token_group
from conveyor.security.tokens import Role, TokenRegistry


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CONVEYOR_HOME", raising=False)
    monkeypatch.setenv("CONVEYOR_BROKER_URL", "conveyor://127.0.0.1:9")  # never a real broker
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def registry_home(tmp_path: Path) -> Path:
    """A home with a token registry (the broker's own home): token commands edit it."""
    TokenRegistry(tmp_path / "tokens.json").save()
    return tmp_path


def run(command: click.Command, *args: str | Path) -> Result:
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def sans(path: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in ext]


# -- parse_duration --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("1.5", 1.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("1w", 604800.0),
        ("30D", 30 * 86400.0),
        (" 10 m ", 600.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5x", "-5s", "1e3", "inf", "nan", "5 minutes", "d"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(click.BadParameter, match="not a duration"):
        parse_duration(text)


# -- certs -----------------------------------------------------------------------------


def test_certs_creates_ca_and_server_then_does_nothing(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    first = run(certs_command, "--out", out)
    assert first.exit_code == 0, first.output
    assert "created CA certificate" in first.stdout
    assert "created server certificate" in first.stdout
    assert {p.name for p in out.iterdir()} == {"ca.pem", "ca.key", "server.pem", "server.key"}
    assert stat.S_IMODE((out / "server.key").stat().st_mode) == 0o600
    snapshot = {p.name: p.read_bytes() for p in out.iterdir()}

    second = run(certs_command, "--out", out)
    assert second.exit_code == 0
    assert "nothing to do" in second.stdout
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot


def test_certs_defaults_to_the_home_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert run(certs_command).exit_code == 0
    assert (tmp_path / ".conveyor" / "server.pem").is_file()
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path / "env-home"))
    assert run(certs_command).exit_code == 0
    assert (tmp_path / "env-home" / "ca.pem").is_file()


def test_certs_hosts_and_force(tmp_path: Path) -> None:
    result = run(certs_command, "--out", tmp_path, "--hosts", "q.example.com, 10.0.0.1")
    assert result.exit_code == 0, result.output
    assert sans(tmp_path / "server.pem") == ["q.example.com", "10.0.0.1"]
    ca = (tmp_path / "ca.pem").read_bytes()

    refused = run(certs_command, "--out", tmp_path, "--hosts", "other.example.com")
    assert refused.exit_code == 1
    assert "--force" in refused.stderr
    assert sans(tmp_path / "server.pem") == ["q.example.com", "10.0.0.1"]

    forced = run(certs_command, "--out", tmp_path, "--hosts", "other.example.com", "--force")
    assert forced.exit_code == 0, forced.output
    assert sans(tmp_path / "server.pem") == ["other.example.com"]
    assert (tmp_path / "ca.pem").read_bytes() == ca  # the CA survives a reissue


def test_certs_bad_hosts(tmp_path: Path) -> None:
    assert run(certs_command, "--out", tmp_path, "--hosts", " , ").exit_code == 2
    bad = run(certs_command, "--out", tmp_path, "--hosts", "no spaces allowed")
    assert bad.exit_code == 1
    assert "neither an IP address nor a DNS name" in bad.stderr


def test_certs_client(tmp_path: Path) -> None:
    result = run(certs_command, "--out", tmp_path, "--client", "alice")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "client-alice.pem").is_file()
    assert stat.S_IMODE((tmp_path / "client-alice.key").stat().st_mode) == 0o600
    assert (tmp_path / "server.pem").is_file()  # a fresh directory gets the full set

    again = run(certs_command, "--out", tmp_path, "--client", "alice")
    assert again.exit_code == 1
    assert "already exists; pass --force" in again.stderr
    assert run(certs_command, "--out", tmp_path, "--client", "alice", "--force").exit_code == 0
    assert run(certs_command, "--out", tmp_path, "--client", "../evil").exit_code == 1


# -- token -----------------------------------------------------------------------------


def test_token_create_prints_the_token_once(registry_home: Path, tmp_path: Path) -> None:
    result = run(token_group, "create", "--role", "worker", "--name", "w1", "--home", tmp_path)
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert re.fullmatch(r"cvy_\S+", token)
    assert "will not be shown again" in result.stderr
    info = TokenRegistry(tmp_path / "tokens.json").verify(token, time.time())
    assert info is not None
    assert (info.name, info.role) == ("w1", Role.WORKER)

    listing = run(token_group, "list", "--home", tmp_path)
    assert listing.exit_code == 0
    assert token not in listing.output
    assert re.search(r"^w1\s+worker\s+active\s", listing.stdout, re.MULTILINE)
    assert info.hash_prefix in listing.stdout


def test_token_ttl_and_default_name(
    monkeypatch: pytest.MonkeyPatch, registry_home: Path, tmp_path: Path
) -> None:
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path))
    before = time.time()
    result = run(token_group, "create", "--role", "producer", "--ttl", "30d")
    assert result.exit_code == 0, result.output
    [info] = TokenRegistry(tmp_path / "tokens.json").list()
    assert re.fullmatch(r"producer-[0-9a-f]{4}", info.name)
    assert info.expires_at is not None
    assert info.expires_at - info.created_at == 30 * 86400
    assert before <= info.created_at <= time.time()


def test_token_create_errors(registry_home: Path, tmp_path: Path) -> None:
    bad_ttl = run(token_group, "create", "--role", "worker", "--ttl", "soon", "--home", tmp_path)
    assert bad_ttl.exit_code == 2
    assert "not a duration" in bad_ttl.stderr
    bad_role = run(token_group, "create", "--role", "root", "--home", tmp_path)
    assert bad_role.exit_code == 2
    assert (
        run(token_group, "create", "--role", "admin", "--name", "x", "--home", tmp_path).exit_code
        == 0
    )
    dup = run(token_group, "create", "--role", "admin", "--name", "x", "--home", tmp_path)
    assert dup.exit_code == 1
    assert "already exists" in dup.stderr
    missing = run(token_group, "create", "--role", "admin", "--home", tmp_path / "nope")
    assert missing.exit_code == 3  # no registry here, no broker to ask: no token at all
    assert f"no token registry at {tmp_path / 'nope' / 'tokens.json'}" in missing.stderr
    assert missing.stdout == ""
    assert not (tmp_path / "nope").exists()


def test_token_revoke(registry_home: Path, tmp_path: Path) -> None:
    token = run(token_group, "create", "--role", "producer", "--name", "p", "--home", tmp_path)
    plaintext = token.stdout.strip()
    result = run(token_group, "revoke", "p", "--home", tmp_path)
    assert result.exit_code == 0
    assert TokenRegistry(tmp_path / "tokens.json").verify(plaintext, time.time()) is None
    listing = run(token_group, "list", "--home", tmp_path)
    assert re.search(r"^p\s+producer\s+revoked\s", listing.stdout, re.MULTILINE)
    unknown = run(token_group, "revoke", "ghost", "--home", tmp_path)
    assert unknown.exit_code == 1
    assert "no token named 'ghost'" in unknown.stderr


def test_token_list_empty(registry_home: Path, tmp_path: Path) -> None:
    result = run(token_group, "list", "--home", tmp_path)
    assert (result.exit_code, result.stdout.strip()) == (0, "no tokens")


def test_a_running_registry_sees_cli_changes(registry_home: Path, tmp_path: Path) -> None:
    broker = TokenRegistry(tmp_path / "tokens.json")
    created = run(token_group, "create", "--role", "worker", "--name", "w", "--home", tmp_path)
    token = created.stdout.strip()
    assert broker.verify(token, time.time()) is not None
    run(token_group, "revoke", "w", "--home", tmp_path)
    assert broker.verify(token, time.time()) is None
