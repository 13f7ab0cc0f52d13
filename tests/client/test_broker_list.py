"""Several broker addresses in one URL: parsing, errors, and the order they are dialled in."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from conveyor.client.endpoint import Address, make_endpoint
from conveyor.client.failover import Rotation
from conveyor.config import MAX_BROKER_ADDRESSES, parse_broker_urls, resolve_client_settings
from conveyor.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("CONVEYOR_HOME", "CONVEYOR_BROKER_URL", "CONVEYOR_TOKEN", "CONVEYOR_CA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("conveyor://a:1", [("a", 1)]),
        ("conveyor://a:65432,b:65432", [("a", 65432), ("b", 65432)]),
        ("conveyor://a,b:7", [("a", 65432), ("b", 7)]),  # the scheme's default port
        ("conveyor://a:1,conveyor://b:2", [("a", 1), ("b", 2)]),
        ("a:1, b:2 ,c:3", [("a", 1), ("b", 2), ("c", 3)]),
        ("conveyor://[::1]:5,127.0.0.1:6", [("::1", 5), ("127.0.0.1", 6)]),
        ("a:1,conveyor://b", [("a", 1), ("b", 65432)]),
        ("conveyor://a:1,a:2", [("a", 1), ("a", 2)]),  # two ports of one host are two brokers
    ],
)
def test_a_list_of_brokers_parses_in_order(url: str, expected: list[tuple[str, int]]) -> None:
    assert parse_broker_urls(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("conveyor://a:1,,b:2", r"has an empty entry \(number 2\)"),
        ("conveyor://a:1,", r"has an empty entry \(number 2\)"),
        (",a:1", r"has an empty entry \(number 1\)"),
        ("a:1,b", "entry 2 of broker URL 'a:1,b': broker address 'b' lacks a port"),
        ("conveyor://a:1,http://b:2", "entry 2 of broker URL"),
        ("conveyor://a:1,b:99999", "entry 2 of broker URL"),
        ("conveyor://a:1,b:1/x", "must not have a path"),
        ("conveyor://a:1,a:1", "lists a:1 twice"),
        ("conveyor://[::1]:5,[::1]:5", r"lists \[::1\]:5 twice"),
        (",".join(f"h{i}:1" for i in range(MAX_BROKER_ADDRESSES + 1)), "at most 64"),
    ],
)
def test_a_bad_list_is_refused_naming_the_entry(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_broker_urls(url)


def test_a_list_in_the_environment_works_and_a_bad_one_names_its_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONVEYOR_BROKER_URL", "conveyor://a:1,b:2")
    assert resolve_client_settings().addresses == [("a", 1), ("b", 2)]
    monkeypatch.setenv("CONVEYOR_BROKER_URL", "conveyor://a:1,,b:2")
    with pytest.raises(ConfigError, match=r"empty entry.*came from CONVEYOR_BROKER_URL"):
        resolve_client_settings()


def test_an_endpoint_holds_every_address(home: Path) -> None:
    endpoint = make_endpoint("conveyor://a:1,[::1]:2", None, None, None, None, home, "t")
    assert endpoint.addresses == (Address("a", 1), Address("::1", 2))
    assert endpoint.address == "a:1,[::1]:2"
    assert (endpoint.host, endpoint.port) == ("a", 1)


ABC = [Address("a", 1), Address("b", 2), Address("c", 3)]


def test_a_rotation_tries_each_address_once_and_fails_over_to_the_next() -> None:
    rotation = Rotation(ABC, start=1)
    assert rotation.first_round() == [ABC[1], ABC[2], ABC[0]]
    rotation.connected(ABC[2])
    # c was lost: the others first, c itself last
    assert rotation.after_loss() == [ABC[0], ABC[1], ABC[2]]
    assert rotation.current == ABC[2]


def test_one_address_is_its_own_round() -> None:
    rotation = Rotation([ABC[0]])
    assert rotation.first_round() == rotation.after_loss() == [ABC[0]]


def test_new_rotations_start_anywhere_so_load_spreads() -> None:
    starts = collections.Counter(Rotation(ABC).current for _ in range(600))
    assert set(starts) == set(ABC)  # each start has probability 1/3: missing one is ~1e-105
