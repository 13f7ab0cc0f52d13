"""conveyor limits: rate and concurrency limits the broker enforces (admin)."""

from __future__ import annotations

from typing import Any

import click

from conveyor import limitspec
from conveyor.cli._client import echo_json, with_client
from conveyor.client.sync import Client
from conveyor.errors import InvalidJob

_TARGETS = "task:NAME or queue:NAME (a rate: 10/s, 100/m, 1000/h), key:PREFIX (a count: 2)"


@click.group("limits")
def limits_group() -> None:
    """Rate limits per task or queue, concurrency limits per key; global for the broker.

    \b
    conveyor limits set task:send_email 10/s
    conveyor limits set queue:emails 100/m
    conveyor limits set key:domain: 2      # jobs with concurrency_key "domain:..."
    conveyor limits clear task:send_email
    """


def _checked(target: str, value: str | None = None) -> Any:
    """Refuse bad input before anything is sent (exit 2, as click's own usage errors)."""
    try:
        kind, _ = limitspec.parse_target(target, "TARGET")
        if value is not None:
            return limitspec.normal(kind, limitspec.parse_value(kind, value, "VALUE"))
    except InvalidJob as exc:
        raise click.BadParameter(f"{exc.message} ({_TARGETS})") from None
    return None


@limits_group.command("set")
@click.argument("target")
@click.argument("value")
@with_client
def set_limit(client: Client, target: str, value: str) -> None:
    """Set TARGET's limit to VALUE; it takes effect at once and survives a restart."""
    normal = _checked(target, value)
    client.limits(set={target: normal})
    click.echo(f"limit {target} = {normal}")


@limits_group.command("clear")
@click.argument("targets", nargs=-1, required=True)
@with_client
def clear_limit(client: Client, targets: tuple[str, ...]) -> None:
    """Remove the limits of TARGETS (a task's own @task limit applies again)."""
    for target in targets:
        _checked(target)
    client.limits(clear=list(targets))
    click.echo(f"cleared {', '.join(targets)}")


@limits_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="print the limits as JSON")
@with_client
def list_limits(client: Client, as_json: bool) -> None:
    """Every limit in force, where it comes from, and what it holds back now."""
    data = client.limits()
    if as_json:
        echo_json(data)
        return
    for line in describe(data):
        click.echo(line)


def describe(data: dict[str, Any]) -> list[str]:
    """The lines ``limits list`` and ``stats`` print."""
    lines: list[str] = []
    for r in data.get("rates", ()):
        if r.get("limited"):
            state = f"limited now, {r.get('held_jobs', 0)} job(s) held"
        else:
            state = f"{r.get('tokens', 0)} token(s)"
        scope = "; all brokers" if r.get("shared") else ""
        lines.append(
            f"rate         {r['target']:<30} {r['rate']:>10}  ({r['source']}{scope}; {state}; "
            f"{r.get('dispatched', 0)} dispatched here)"
        )
    for c in data.get("concurrency", ()):
        lines.append(f"concurrency  {c['target']:<30} {c['limit']:>10}  ({c['source']})")
    for key, n in (data.get("running_by_key") or {}).items():
        lines.append(f"running      key {key:<26} {n:>10}")
    for key, n in (data.get("waiting_for_key") or {}).items():
        lines.append(f"waiting      key {key:<26} {n:>10}  (queued until a slot frees)")
    if data.get("held_by_rate") or data.get("waiting_for_keys"):
        lines.append(
            f"held         {data.get('held_by_rate', 0)} job(s) by a rate limit, "
            f"{data.get('waiting_for_keys', 0)} waiting for a key"
        )
    return lines or ["no limits"]
