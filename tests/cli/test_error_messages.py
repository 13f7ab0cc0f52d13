"""Client-side CLI errors: one line naming the flag and the variable that set the value
(never only the Python keyword), and exit 3 when the broker cannot be used."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from conveyor.broker.app import Broker
from conveyor.cli import main
from conveyor.security.certs import make_ca


async def stats(home: Path, url: str, *args: str, **env: str) -> Result:
    environ = {"CONVEYOR_HOME": str(home), "CONVEYOR_BROKER_URL": url, **env}
    return await asyncio.to_thread(CliRunner().invoke, main, ["stats", *args], env=environ)


def one_line(result: Result) -> str:
    assert result.exit_code == 3, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for keyword in re.findall(r"\b(\w+)= in Python", lines[0]):  # a keyword comes with a flag
        assert f"--{keyword}" in lines[0] or (keyword == "url" and "--broker" in lines[0])
    return lines[0]


async def test_a_missing_ca_file_names_the_flag_or_the_variable(
    broker: Broker, home: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.pem"
    line = one_line(await stats(home, broker.url, "--ca", str(missing)))
    assert "given by --ca" in line and str(missing) in line and "CONVEYOR_CA" in line
    line = one_line(await stats(home, broker.url, CONVEYOR_CA=str(missing)))
    assert "given by CONVEYOR_CA" in line and str(missing) in line


async def test_an_unreadable_or_wrong_ca_says_where_it_came_from(
    broker: Broker, home: Path, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    line = one_line(await stats(home, broker.url, "--ca", str(garbage)))
    assert "cannot load CA certificates" in line and "--ca / CONVEYOR_CA" in line
    other = make_ca(tmp_path / "other").cert
    line = one_line(await stats(home, broker.url, CONVEYOR_CA=str(other)))
    assert f"cannot verify the broker at 127.0.0.1:{broker.port} against the CA in {other}" in line
    assert "--ca / CONVEYOR_CA" in line


async def test_a_refused_token_says_where_it_came_from(broker: Broker, home: Path) -> None:
    line = one_line(await stats(home, broker.url, "--token", "cvy_not_a_real_token"))
    assert "unauthorized" in line and "the token came from --token" in line
    line = one_line(await stats(home, broker.url, CONVEYOR_TOKEN="cvy_nope"))
    assert "the token came from CONVEYOR_TOKEN" in line
    (home / "admin.token").write_text("cvy_stale\n")
    line = one_line(await stats(home, broker.url))
    assert f"the token came from {home / 'admin.token'}" in line and "--token" in line


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (("--broker", "http://x"), {}, "the URL came from --broker"),
        ((), {"CONVEYOR_BROKER_URL": "bro ker:1"}, "the URL came from CONVEYOR_BROKER_URL"),
        (("--key", "{key}"), {}, "give --cert FILE or set CONVEYOR_CERT"),
        ((), {"CONVEYOR_KEY": "{key}"}, "a client key was given (CONVEYOR_KEY)"),
    ],
)
async def test_settings_errors_name_flag_and_variable(
    broker: Broker,
    home: Path,
    tmp_path: Path,
    args: tuple[str, ...],
    env: dict[str, str],
    says: str,
) -> None:
    key = tmp_path / "client.key"
    key.write_text("k")
    args = tuple(a.format(key=key) for a in args)
    env = {k: v.format(key=key) for k, v in env.items()}
    url = env.pop("CONVEYOR_BROKER_URL", broker.url)
    assert says in one_line(await stats(home, url, *args, **env))
