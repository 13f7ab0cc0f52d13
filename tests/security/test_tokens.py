"""The token registry: hashes only, roles, revocation, expiry with an injected clock, reload."""

from __future__ import annotations

import hashlib
import json
import re
import stat
from pathlib import Path

import pytest

from conveyor.errors import ConfigError
from conveyor.security.tokens import DuplicateTokenName, Role, TokenRegistry

NOW = 1_700_000_000.0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "tokens.json"


def test_created_token_verifies_with_its_role(path: Path) -> None:
    reg = TokenRegistry(path)
    token, info = reg.create(Role.WORKER, "w1", now=NOW)
    assert re.fullmatch(r"cvy_[A-Za-z0-9_-]{43}", token)
    assert (info.name, info.role, info.created_at, info.expires_at) == (
        "w1",
        Role.WORKER,
        NOW,
        None,
    )
    assert info.revoked is False
    assert info.hash_prefix == hashlib.sha256(token.encode()).hexdigest()[:8]
    assert reg.verify(token, NOW + 1) == info


def test_unknown_or_malformed_tokens_do_not_verify(path: Path) -> None:
    reg = TokenRegistry(path)
    token, _ = reg.create("producer", now=NOW)
    assert reg.verify(token[:-1] + ("A" if token[-1] != "A" else "B"), NOW) is None
    assert reg.verify(token.removeprefix("cvy_"), NOW) is None
    assert reg.verify("", NOW) is None
    assert reg.verify("cvy_" + "A" * 10_000, NOW) is None


def test_only_a_hash_is_stored_with_mode_0600(path: Path) -> None:
    reg = TokenRegistry(path)
    token, _ = reg.create(Role.ADMIN, "root", now=NOW)
    text = path.read_text()
    assert token not in text
    assert token.removeprefix("cvy_") not in text
    assert hashlib.sha256(token.encode()).hexdigest() in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_tokens_survive_a_new_registry_instance(path: Path) -> None:
    token, info = TokenRegistry(path).create(Role.PRODUCER, "p", ttl=60, now=NOW)
    again = TokenRegistry(path)
    assert again.verify(token, NOW) == info
    assert again.list() == [info]


def test_revoked_token_stops_verifying(path: Path) -> None:
    reg = TokenRegistry(path)
    token, _ = reg.create(Role.PRODUCER, "p", now=NOW)
    keep, _ = reg.create(Role.PRODUCER, "q", now=NOW)
    assert reg.revoke("p") is True
    assert reg.verify(token, NOW) is None
    assert reg.verify(keep, NOW) is not None
    assert reg.revoke("p") is True  # idempotent
    assert reg.revoke("nobody") is False
    assert TokenRegistry(path).verify(token, NOW) is None
    [p, q] = reg.list()
    assert (p.name, p.revoked, q.name, q.revoked) == ("p", True, "q", False)


def test_expiry_follows_the_injected_clock(path: Path) -> None:
    reg = TokenRegistry(path)
    token, info = reg.create(Role.WORKER, ttl=60, now=NOW)
    assert info.expires_at == NOW + 60
    assert reg.verify(token, NOW + 59.9) is not None
    assert reg.verify(token, NOW + 60) is None
    assert info.is_active(NOW) and not info.is_active(NOW + 61)


def test_names_are_unique_and_default_from_the_role(path: Path) -> None:
    reg = TokenRegistry(path)
    _, a = reg.create(Role.PRODUCER, now=NOW)
    _, b = reg.create(Role.PRODUCER, now=NOW)
    assert re.fullmatch(r"producer-[0-9a-f]{4}", a.name)
    assert a.name != b.name
    reg.create(Role.WORKER, "dup", now=NOW)
    reg.revoke("dup")
    with pytest.raises(DuplicateTokenName):
        reg.create(Role.WORKER, "dup", now=NOW)


@pytest.mark.parametrize(
    ("role", "name", "ttl"),
    [
        ("root", None, None),
        (Role.WORKER, "has space", None),
        (Role.WORKER, "../x", None),
        (Role.WORKER, "", None),
        (Role.WORKER, None, 0),
        (Role.WORKER, None, -5),
        (Role.WORKER, None, float("nan")),
    ],
)
def test_bad_arguments_are_value_errors(
    path: Path, role: str, name: str | None, ttl: float | None
) -> None:
    with pytest.raises(ValueError):
        TokenRegistry(path).create(role, name, ttl, now=NOW)
    assert not path.exists()


def test_a_running_registry_picks_up_changes_made_by_another(path: Path) -> None:
    broker = TokenRegistry(path)
    cli = TokenRegistry(path)
    assert broker.reload_if_changed() is False
    token, _ = cli.create(Role.PRODUCER, "late", now=NOW)
    assert broker.reload_if_changed() is True
    assert broker.reload_if_changed() is False
    assert broker.verify(token, NOW) is not None
    TokenRegistry(path).revoke("late")
    assert broker.verify(token, NOW) is None  # verify notices the change by itself


def test_two_writers_do_not_lose_each_others_changes(path: Path) -> None:
    a = TokenRegistry(path)
    b = TokenRegistry(path)  # loaded before a writes: its view is stale
    ta, _ = a.create(Role.WORKER, "from-a", now=NOW)
    tb, _ = b.create(Role.WORKER, "from-b", now=NOW)
    fresh = TokenRegistry(path)
    assert {i.name for i in fresh.list()} == {"from-a", "from-b"}
    assert fresh.verify(ta, NOW) and fresh.verify(tb, NOW)
    with pytest.raises(DuplicateTokenName):
        b.create(Role.WORKER, "from-a", now=NOW)


def test_a_deleted_file_fails_closed(path: Path) -> None:
    reg = TokenRegistry(path)
    token, _ = reg.create(Role.ADMIN, now=NOW)
    path.unlink()
    assert reg.verify(token, NOW) is None
    assert reg.list() == []


def test_remove_frees_the_name(path: Path) -> None:
    reg = TokenRegistry(path)
    old, _ = reg.create(Role.ADMIN, "admin", now=NOW)
    assert reg.remove("admin") is True
    assert reg.remove("admin") is False
    new, _ = reg.create(Role.ADMIN, "admin", now=NOW)
    assert reg.verify(old, NOW) is None
    assert reg.verify(new, NOW) is not None


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"version": 99, "tokens": []}',
        '{"version": 1, "tokens": [{"name": "x"}]}',
        '{"version": 1, "tokens": [{"name": "x", "role": "god", "sha256": "' + "0" * 64 + '", '
        '"created_at": 1}]}',
        '{"version": 1, "tokens": [{"name": "x", "role": "admin", "sha256": "short", '
        '"created_at": 1}]}',
    ],
)
def test_a_damaged_file_is_a_config_error(path: Path, content: str) -> None:
    path.write_text(content)
    with pytest.raises(ConfigError, match="damaged"):
        TokenRegistry(path)


def test_save_creates_an_empty_registry(path: Path) -> None:
    TokenRegistry(path).save()
    assert json.loads(path.read_text()) == {"version": 1, "tokens": []}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("name", ["ok\n", "a b", "", "-lead"])
def test_token_names_are_checked_whole(tmp_path: Path, name: str) -> None:
    registry = TokenRegistry(tmp_path / "tokens.json")
    with pytest.raises(ValueError, match="token name"):
        registry.create(Role.PRODUCER, name, now=0.0)


@pytest.mark.parametrize("ttl", [float("inf"), float("nan"), 0, -1])
def test_a_ttl_must_be_a_real_positive_duration(tmp_path: Path, ttl: float) -> None:
    registry = TokenRegistry(tmp_path / "tokens.json")
    with pytest.raises(ValueError, match="ttl"):
        registry.create(Role.PRODUCER, "x", ttl, now=0.0)


def test_why_inactive_names_the_reason_for_an_open_connection(path: Path) -> None:
    from conveyor.security.tokens import hash_token

    reg = TokenRegistry(path)
    revoked, _ = reg.create(Role.WORKER, "r", now=NOW)
    removed, _ = reg.create(Role.WORKER, "gone", now=NOW)
    expiring, _ = reg.create(Role.WORKER, "e", ttl=60, now=NOW)
    fine, _ = reg.create(Role.WORKER, "f", now=NOW)
    digests = {
        name: hash_token(t)
        for name, t in [("r", revoked), ("gone", removed), ("e", expiring), ("f", fine)]
    }
    assert all(reg.why_inactive(d, NOW + 1) is None for d in digests.values())
    other = TokenRegistry(path)  # `conveyor token` in another process
    other.revoke("r")
    other.remove("gone")
    assert reg.why_inactive(digests["r"], NOW + 1) == "token revoked"  # re-read the file
    assert reg.why_inactive(digests["gone"], NOW + 1) == "token removed"
    assert reg.why_inactive(digests["e"], NOW + 59) is None
    assert reg.why_inactive(digests["e"], NOW + 60) == "token expired"
    assert reg.why_inactive(digests["f"], NOW + 10**6) is None
    # a name freed and taken again by a new token does not revive the old one
    reg.create(Role.ADMIN, "gone", now=NOW)
    assert reg.why_inactive(digests["gone"], NOW + 1) == "token removed"
