"""Options every client-side command shares, and turning errors into clean exits."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from conveyor.cli._exit import EXIT_UNREACHABLE, Failed, Unreachable
from conveyor.client.sync import Client
from conveyor.errors import (
    AuthenticationError,
    BrokerError,
    ConfigError,
    ConnectionLost,
    ConveyorError,
    PermissionDenied,
)

F = TypeVar("F", bound=Callable[..., Any])


def client_options(fn: F) -> F:
    """--broker, --token, --ca, --cert, --key, --home: flag > environment > $CONVEYOR_HOME."""
    for option in reversed(
        [
            click.option(
                "--broker",
                "broker_url",
                metavar="URL",
                help="conveyor://host:port, or several to fail over between: "
                "conveyor://a:65432,b:65432 [env CONVEYOR_BROKER_URL; else broker_url in "
                "$CONVEYOR_HOME/config.toml; default conveyor://127.0.0.1:65432]",
            ),
            click.option(
                "--token",
                metavar="TOKEN",
                help="[env CONVEYOR_TOKEN; default $CONVEYOR_HOME/admin.token]",
            ),
            click.option(
                "--ca",
                metavar="FILE",
                help="CA certificate to verify the broker "
                "[env CONVEYOR_CA; default $CONVEYOR_HOME/ca.pem]",
            ),
            click.option(
                "--cert",
                metavar="FILE",
                help="client certificate, for mutual TLS [env CONVEYOR_CERT]",
            ),
            click.option("--key", metavar="FILE", help="its private key [env CONVEYOR_KEY]"),
            click.option("--home", metavar="DIR", help="[env CONVEYOR_HOME; default ./.conveyor]"),
        ]
    ):
        fn = option(fn)
    return fn


def make_client(opts: dict[str, Any]) -> Client:
    """A Client (not connected yet) from the shared options."""
    return Client(
        opts.get("broker_url"),
        token=opts.get("token"),
        ca=opts.get("ca"),
        cert=opts.get("cert"),
        key=opts.get("key"),
        home=opts.get("home"),
        name="cli",
        reconnect_timeout=0,
    )


@contextmanager
def connect(opts: dict[str, Any]) -> Iterator[Client]:
    """A connected Client from the shared options; errors become one clear line."""
    with errors_as_exit():
        client = make_client(opts)
        try:
            client.connect()
        except AuthenticationError as exc:
            raise Unreachable(
                f"{exc.code}: {exc.message} (the token came from "
                f"{client.endpoint.token_source}; give another with --token / CONVEYOR_TOKEN)"
            ) from exc
        try:
            yield client
        finally:
            client.close()


@contextmanager
def errors_as_exit(unreachable: int = EXIT_UNREACHABLE) -> Iterator[None]:
    """ConveyorErrors as one line and an exit code (see conveyor.cli._exit); the
    long-running commands pass ``unreachable=1``: for them any start-up failure is 1."""
    try:
        yield
    except (AuthenticationError, PermissionDenied) as exc:
        raise _exit_error(f"{exc.code}: {exc.message}", unreachable) from exc
    except BrokerError as exc:
        where = f" (field: {exc.field})" if exc.field else ""
        raise Failed(f"{exc.code}: {exc.message}{where}") from exc
    except (ConfigError, ConnectionLost) as exc:
        raise _exit_error(str(exc), unreachable) from exc
    except ConveyorError as exc:
        raise Failed(str(exc)) from exc


def _exit_error(message: str, code: int) -> click.ClickException:
    return Unreachable(message) if code == EXIT_UNREACHABLE else Failed(message)


def pop_client_opts(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs.pop(k) for k in ("broker_url", "token", "ca", "cert", "key", "home")}


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def with_client(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: open a Client from the shared options and pass it as ``client``."""

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        with connect(pop_client_opts(kwargs)) as client, errors_as_exit():
            return fn(client=client, **kwargs)

    return client_options(wrapper)
