"""Configuration: broker URLs, the home directory, client settings and the broker's files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from conveyor.config import (
    DEFAULT_BROKER_PORT,
    ClientSettings,
    ensure_broker_files,
    home_dir,
    parse_broker_url,
    resolve_client_settings,
    write_broker_url,
)
from conveyor.errors import ConfigError
from conveyor.security.tokens import Role, TokenRegistry

NOW = 1_700_000_000.0
ENV = ("CONVEYOR_HOME", "CONVEYOR_BROKER_URL", "CONVEYOR_TOKEN", "CONVEYOR_CA")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (*ENV, "CONVEYOR_CERT", "CONVEYOR_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("conveyor://broker.example.com:7000", ("broker.example.com", 7000)),
        ("conveyor://broker", ("broker", DEFAULT_BROKER_PORT)),
        ("conveyor://10.1.2.3", ("10.1.2.3", 65432)),
        ("broker:7000", ("broker", 7000)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("conveyor://[::1]:65432", ("::1", 65432)),
        ("conveyor://[2001:db8::5]", ("2001:db8::5", 65432)),
        ("[::1]:9", ("::1", 9)),
        ("  CONVEYOR://Broker:9  ", ("broker", 9)),
        ("conveyor://broker:9/", ("broker", 9)),
    ],
)
def test_parse_broker_url_accepts(url: str, expected: tuple[str, int]) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "",
        "broker",
        "::1",
        "http://broker:80",
        "conveyor://",
        "conveyor://broker:0",
        "conveyor://broker:65536",
        "conveyor://broker:port",
        "conveyor://broker:-1",
        "conveyor://user@broker:1",
        "conveyor://@broker:1",
        "conveyor://broker:1/path",
        "conveyor://broker:1?x=1",
        "conveyor://[::1",
        "bro ker:1",
    ],
)
def test_parse_broker_url_rejects_with_a_clear_message(url: str) -> None:
    with pytest.raises(ConfigError, match="conveyor://HOST"):
        parse_broker_url(url)


def test_home_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert home_dir() == tmp_path / ".conveyor"
    monkeypatch.setenv("CONVEYOR_HOME", "/from/env")
    assert home_dir() == Path("/from/env")
    assert home_dir("/explicit") == Path("/explicit")
    monkeypatch.setenv("CONVEYOR_HOME", "")
    assert home_dir() == tmp_path / ".conveyor"


def test_client_settings_defaults_with_an_empty_home(tmp_path: Path) -> None:
    settings = resolve_client_settings(home=str(tmp_path / "nothing"))
    assert settings == ClientSettings(
        "conveyor://127.0.0.1:65432", None, None, None, None, tmp_path / "nothing"
    )
    assert settings.address == ("127.0.0.1", 65432)


def test_client_settings_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "admin.token").write_text("cvy_from_file\n")
    (home / "ca.pem").write_text("home ca")
    env_ca = tmp_path / "env-ca.pem"
    env_ca.write_text("env ca")
    arg_ca = tmp_path / "arg-ca.pem"
    arg_ca.write_text("arg ca")

    from_home = resolve_client_settings(home=home)
    assert (from_home.token, from_home.ca_file) == ("cvy_from_file", home / "ca.pem")

    monkeypatch.setenv("CONVEYOR_HOME", str(home))
    monkeypatch.setenv("CONVEYOR_BROKER_URL", "conveyor://env-host")
    monkeypatch.setenv("CONVEYOR_TOKEN", "cvy_from_env")
    monkeypatch.setenv("CONVEYOR_CA", str(env_ca))
    from_env = resolve_client_settings()
    assert from_env == ClientSettings("conveyor://env-host", "cvy_from_env", env_ca, home=home)

    from_args = resolve_client_settings("arg-host:1", "cvy_from_arg", str(arg_ca))
    assert from_args == ClientSettings("arg-host:1", "cvy_from_arg", arg_ca, home=home)


def test_client_settings_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="conveyor://HOST"):
        resolve_client_settings("http://nope")
    with pytest.raises(ConfigError, match="CA certificate given by --ca"):
        resolve_client_settings(ca=tmp_path / "missing.pem")
    monkeypatch.setenv("CONVEYOR_CA", str(tmp_path / "gone.pem"))
    with pytest.raises(ConfigError, match="CA certificate given by CONVEYOR_CA does not exist"):
        resolve_client_settings()


def test_client_certificate_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    cert.write_text("c")
    key.write_text("k")
    monkeypatch.setenv("CONVEYOR_CERT", str(cert))
    monkeypatch.setenv("CONVEYOR_KEY", str(key))
    settings = resolve_client_settings()
    assert (settings.cert_file, settings.key_file) == (cert, key)
    monkeypatch.delenv("CONVEYOR_CERT")
    with pytest.raises(ConfigError, match="without a client certificate"):
        resolve_client_settings()


def test_ensure_broker_files_creates_a_working_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    files, lines = ensure_broker_files(home, ["localhost", "10.9.8.7"], now=NOW)
    assert files.home == home
    assert mode(home) == 0o700
    for path in (files.ca_file, files.cert_file, files.key_file, files.tokens_file):
        assert path.is_file(), path
    assert mode(files.key_file) == 0o600
    assert mode(files.tokens_file) == 0o600
    assert mode(files.admin_token_file) == 0o600
    assert len(lines) == 5
    assert any("admin token" in line for line in lines)

    cert = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.9.8.7"]

    token = files.admin_token_file.read_text().strip()
    info = TokenRegistry(files.tokens_file).verify(token, NOW)
    assert info is not None
    assert (info.name, info.role) == ("admin", Role.ADMIN)

    settings = resolve_client_settings(home=home)
    assert (settings.token, settings.ca_file) == (token, files.ca_file)


def test_ensure_broker_files_is_idempotent(tmp_path: Path) -> None:
    files, _ = ensure_broker_files(tmp_path / "home", now=NOW)
    snapshot = {p.name: p.read_bytes() for p in files.home.iterdir()}
    again, lines = ensure_broker_files(tmp_path / "home", now=NOW + 10)
    assert (again, lines) == (files, [])
    assert {p.name: p.read_bytes() for p in files.home.iterdir()} == snapshot


def test_a_lost_admin_token_is_replaced(tmp_path: Path) -> None:
    files, _ = ensure_broker_files(tmp_path, now=NOW)
    old = files.admin_token_file.read_text().strip()
    files.admin_token_file.unlink()
    _, lines = ensure_broker_files(tmp_path, now=NOW)
    assert lines == [f"replaced the lost admin token in {files.admin_token_file} (mode 0600)"]
    new = files.admin_token_file.read_text().strip()
    registry = TokenRegistry(files.tokens_file)
    assert new != old
    assert registry.verify(old, NOW) is None
    assert registry.verify(new, NOW) is not None
    assert [i.name for i in registry.list()] == ["admin"]


def test_a_loose_home_is_reported(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    _, lines = ensure_broker_files(tmp_path, now=NOW)
    assert lines[0].startswith("warning:")


# -- config.toml: where the broker is, for clients of a home ------------------------------


def test_broker_url_from_the_config_file_ranks_below_flag_and_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    assert resolve_client_settings(home=home).broker_url == "conveyor://127.0.0.1:65432"
    written = write_broker_url(home, "conveyor://127.0.0.1:7000")
    assert mode(written) == 0o600 and [p.name for p in home.iterdir()] == ["config.toml"]
    from_file = resolve_client_settings(home=home)
    assert from_file.broker_url == "conveyor://127.0.0.1:7000"
    assert from_file.url_source == str(home / "config.toml")
    monkeypatch.setenv("CONVEYOR_BROKER_URL", "conveyor://env-host:1")
    assert resolve_client_settings(home=home).broker_url == "conveyor://env-host:1"
    assert resolve_client_settings("flag-host:2", home=home).broker_url == "flag-host:2"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("broker_url = conveyor://x\n", "cannot read"),
        ("broker_url = 7000\n", "broker_url must be a string"),
        ('broker_url = "http://x"\n', "the URL came from"),
    ],
)
def test_a_bad_config_file_is_named(tmp_path: Path, text: str, says: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError, match=says) as info:
        resolve_client_settings(home=tmp_path)
    assert str(tmp_path / "config.toml") in str(info.value)
