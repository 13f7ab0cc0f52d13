"""Where settings come from: a CLI flag beats the environment, which beats files in the home.

The home directory (``$CONVEYOR_HOME``, default ``./.conveyor``) holds what the broker
makes on first start and what local clients read from it::

    ca.pem ca.key server.pem server.key    certificates (conveyor.security.certs)
    tokens.json                            token hashes (conveyor.security.tokens)
    admin.token                            the first admin token, plaintext, mode 0600
    config.toml                            broker_url = "conveyor://host:port", written by
                                           the broker at start (mode 0600), so clients and
                                           workers find a broker on a non-default port

A broker URL may list several brokers to fail over between, comma-separated
(``conveyor://a:65432,b:65432``; :func:`parse_broker_urls`).

Environment: ``CONVEYOR_HOME``, ``CONVEYOR_BROKER_URL``, ``CONVEYOR_TOKEN``,
``CONVEYOR_CA``, ``CONVEYOR_CERT``, ``CONVEYOR_KEY``. An empty variable counts as unset.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from conveyor.errors import ConfigError
from conveyor.security import certs
from conveyor.security.tokens import Role, TokenRegistry

DEFAULT_BROKER_PORT = 65432
DEFAULT_HTTP_PORT = 8080
DEFAULT_HOST = "127.0.0.1"
DEFAULT_BROKER_URL = f"conveyor://{DEFAULT_HOST}:{DEFAULT_BROKER_PORT}"
SCHEME = "conveyor"

CA_FILE = "ca.pem"
CERT_FILE = "server.pem"
KEY_FILE = "server.key"
TOKENS_FILE = "tokens.json"
ADMIN_TOKEN_FILE = "admin.token"
ADMIN_TOKEN_NAME = "admin"
CONFIG_FILE = "config.toml"


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def home_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The Conveyor home: ``explicit``, else ``$CONVEYOR_HOME``, else ``./.conveyor``."""
    if explicit is not None and str(explicit):
        return Path(explicit).expanduser()
    env = _env("CONVEYOR_HOME")
    if env is not None:
        return Path(env).expanduser()
    return Path.cwd() / ".conveyor"


def parse_broker_url(url: str) -> tuple[str, int]:
    """``conveyor://host[:port]`` or ``host:port`` (IPv6 in brackets) -> ``(host, port)``."""
    text = url.strip()
    hint = "expected conveyor://HOST[:PORT] or HOST:PORT (IPv6 in brackets: [::1]:65432)"
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme.lower() != SCHEME:
            raise ConfigError(f"broker URL {url!r} has scheme {scheme!r}; {hint}")
        default_port: int | None = DEFAULT_BROKER_PORT
    else:
        rest, default_port = text, None
    try:
        parts = urlsplit("//" + rest)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ConfigError(f"invalid broker URL {url!r} ({exc}); {hint}") from None
    if not host or any(c.isspace() for c in host) or "@" in parts.netloc:
        raise ConfigError(f"invalid broker URL {url!r}; {hint}")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ConfigError(f"broker URL {url!r} must not have a path or query; {hint}")
    if port is None:
        if default_port is None:
            raise ConfigError(f"broker address {url!r} lacks a port; {hint}")
        port = default_port
    if port == 0:
        raise ConfigError(f"broker URL {url!r} has port 0; {hint}")
    return host, port


MAX_BROKER_ADDRESSES = 64  # a list longer than this is a mistake, not a cluster


def parse_broker_urls(text: str) -> list[tuple[str, int]]:
    """One or several broker addresses, comma-separated, in the order given.

    ``conveyor://a:65432,b:65432`` (hosts after the scheme share it, so their port may be
    left out: ``conveyor://a,b``), ``conveyor://a:1,conveyor://b:2`` and ``a:1,b:2`` all
    work; each entry is checked as :func:`parse_broker_url` checks one. An empty entry,
    the same address twice or more than :data:`MAX_BROKER_ADDRESSES` raise ConfigError.
    """
    entries = text.split(",")  # no valid entry holds a comma (IPv6 goes in brackets)
    if len(entries) > MAX_BROKER_ADDRESSES:
        raise ConfigError(
            f"broker URL lists {len(entries)} addresses; at most {MAX_BROKER_ADDRESSES} are "
            "allowed (put a load balancer or DNS name in front of a larger pool)"
        )
    if len(entries) == 1:
        return [parse_broker_url(text)]
    addresses: list[tuple[str, int]] = []
    schemed = False  # an entry after conveyor://... is read as if it carried the scheme too
    for n, raw in enumerate(entries, 1):
        entry = raw.strip()
        if not entry:
            raise ConfigError(
                f"broker URL {text!r} has an empty entry (number {n}): separate addresses "
                "with single commas, as in conveyor://a:65432,b:65432"
            )
        if "://" in entry:
            schemed = True
        elif schemed:
            entry = f"{SCHEME}://{entry}"
        try:
            address = parse_broker_url(entry)
        except ConfigError as exc:
            raise ConfigError(f"entry {n} of broker URL {text!r}: {exc}") from None
        if address in addresses:
            host, port = address
            shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise ConfigError(f"broker URL {text!r} lists {shown} twice")
        addresses.append(address)
    return addresses


@dataclass(frozen=True)
class ClientSettings:
    """How a client reaches and authenticates to the broker."""

    broker_url: str
    token: str | None
    ca_file: Path | None
    cert_file: Path | None = None
    key_file: Path | None = None
    home: Path = Path(".conveyor")
    # where the URL, the token and the CA came from, for messages ("--token", a file, ...)
    url_source: str = field(default="the default", compare=False)
    token_source: str = field(default="", compare=False)
    ca_source: str = field(default="", compare=False)

    @property
    def address(self) -> tuple[str, int]:
        """The first address of :attr:`addresses`."""
        return self.addresses[0]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Every broker address the URL lists (one, or several to fail over between)."""
        return parse_broker_urls(self.broker_url)


def resolve_client_settings(
    broker_url: str | None = None,
    token: str | None = None,
    ca: str | os.PathLike[str] | None = None,
    home: str | os.PathLike[str] | None = None,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
) -> ClientSettings:
    """Resolve client settings: argument > environment > files in the home directory
    (``broker_url`` in ``config.toml``, ``admin.token``, ``ca.pem``) > defaults.

    Raises :class:`ConfigError` for a malformed URL or a named file that does not exist.
    """
    home_path = home_dir(home)
    url, url_source = _first(
        (broker_url, "--broker (url= in Python)"),
        (_env("CONVEYOR_BROKER_URL"), "CONVEYOR_BROKER_URL"),
        (read_config(home_path).get("broker_url"), str(home_path / CONFIG_FILE)),
        (DEFAULT_BROKER_URL, "the default"),
    )
    url = url or DEFAULT_BROKER_URL
    try:
        parse_broker_urls(url)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (the URL came from {url_source})") from None
    tok, token_source = _first(
        (token, "--token (token= in Python)"),
        (_env("CONVEYOR_TOKEN"), "CONVEYOR_TOKEN"),
        (_read_token_file(home_path / ADMIN_TOKEN_FILE), str(home_path / ADMIN_TOKEN_FILE)),
    )
    ca_file = _named_file(ca, "--ca", "CONVEYOR_CA", "CA certificate")
    ca_source = _source(ca, "--ca", "CONVEYOR_CA")
    if ca_file is None and (home_path / CA_FILE).is_file():
        ca_file, ca_source = home_path / CA_FILE, str(home_path / CA_FILE)
    cert_file = _named_file(cert, "--cert", "CONVEYOR_CERT", "client certificate")
    key_file = _named_file(key, "--key", "CONVEYOR_KEY", "client key")
    if key_file is not None and cert_file is None:
        raise ConfigError(
            f"a client key was given ({_source(key, '--key', 'CONVEYOR_KEY')}) without a "
            "client certificate: give --cert FILE or set CONVEYOR_CERT"
        )
    return ClientSettings(
        url, tok, ca_file, cert_file, key_file, home_path, url_source, token_source, ca_source
    )


def read_config(home: Path) -> dict[str, str]:
    """The settings in ``home/config.toml`` (only ``broker_url`` is read); {} if absent."""
    path = home / CONFIG_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc} (fix or delete it)") from None
    url = data.get("broker_url")
    if url is not None and not isinstance(url, str):
        raise ConfigError(f'{path}: broker_url must be a string, like "conveyor://host:port"')
    return {"broker_url": url} if url else {}


def write_broker_url(home: Path, url: str) -> Path:
    """Write ``broker_url = "URL"`` to ``home/config.toml`` (mode 0600, atomically)."""
    path = home / CONFIG_FILE
    text = (
        "# Written by `conveyor broker` when it starts: clients and workers using this home\n"
        "# connect here unless --broker or CONVEYOR_BROKER_URL says otherwise.\n"
        f"broker_url = {json.dumps(url)}\n"  # a JSON string of ASCII is a TOML basic string
    )
    certs.write_private_file(path, text.encode("ascii"), force=True)
    return path


def _first(*candidates: tuple[str | None, str]) -> tuple[str | None, str]:
    """The first value that is set, and where it came from."""
    for value, source in candidates:
        if value:
            return value, source
    return None, ""


def _source(arg: str | os.PathLike[str] | None, flag: str, env: str) -> str:
    """Where a file setting came from, in words: the flag (keyword) or the variable."""
    if arg is not None and str(arg):
        return f"{flag} ({flag.lstrip('-')}= in Python)"
    return env if _env(env) is not None else ""


def _named_file(arg: str | os.PathLike[str] | None, flag: str, env: str, what: str) -> Path | None:
    value = str(arg) if arg is not None and str(arg) else _env(env)
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"the {what} given by {_source(arg, flag, env)} does not exist: {path} "
            f"(set {flag} / {env} to an existing file)"
        )
    return path


def _read_token_file(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class BrokerFiles:
    """The files a broker runs from, all inside its home directory."""

    home: Path
    ca_file: Path
    cert_file: Path
    key_file: Path
    tokens_file: Path
    admin_token_file: Path

    @classmethod
    def in_home(cls, home: Path) -> BrokerFiles:
        return cls(
            home=home,
            ca_file=home / CA_FILE,
            cert_file=home / CERT_FILE,
            key_file=home / KEY_FILE,
            tokens_file=home / TOKENS_FILE,
            admin_token_file=home / ADMIN_TOKEN_FILE,
        )


def ensure_broker_files(
    home: Path, hosts: Sequence[str] | None = None, *, now: float
) -> tuple[BrokerFiles, list[str]]:
    """Create whatever the broker needs in ``home`` and is missing; keep everything else.

    Makes the directory (0700), the CA and server certificate, the token registry and, if
    ``admin.token`` is missing, a fresh admin token named ``admin`` (replacing any old
    registry entry of that name, whose plaintext is lost). Returns the files and one
    human-readable line per thing created, for the broker to print.
    """
    files = BrokerFiles.in_home(Path(home))
    lines: list[str] = []
    if not files.home.exists():
        files.home.mkdir(mode=0o700, parents=True)
        lines.append(f"created Conveyor home {files.home}")
    elif files.home.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        lines.append(f"warning: {files.home} is readable by other users; chmod 700 it")
    lines += certs.ensure_ca_and_server(files.home, hosts, now=now)
    registry = TokenRegistry(files.tokens_file)
    if not files.tokens_file.exists():
        registry.save()
        lines.append(f"created token registry {files.tokens_file}")
    if not files.admin_token_file.exists():
        replaced = registry.remove(ADMIN_TOKEN_NAME)
        token, _ = registry.create(Role.ADMIN, ADMIN_TOKEN_NAME, now=now)
        certs.write_private_file(files.admin_token_file, (token + "\n").encode("ascii"))
        verb = "replaced the lost" if replaced else "created"
        lines.append(f"{verb} admin token in {files.admin_token_file} (mode 0600)")
    return files, lines
