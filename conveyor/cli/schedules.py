"""conveyor schedule: periodic jobs kept and fired by the broker (producer or admin token).

Cron expressions and time zones are checked here before anything is sent (a bad one is a
usage error, exit 2); an unknown schedule is ``not_found`` (exit 1).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from conveyor.cli._client import echo_json, with_client
from conveyor.cli._show import on_terminal
from conveyor.cli.submit import parse_pairs, print_result, wait_for, wait_option
from conveyor.client.sync import Client
from conveyor.errors import InvalidJob
from conveyor.schedules import CatchUp, check_cron, check_schedule_name, check_tz, parse_every


def _checked(check: Any) -> Any:
    """A click callback running one of conveyor.schedules' checks on an option's value."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(value)
        except InvalidJob as exc:
            raise click.BadParameter(exc.message, ctx, param) from None

    return callback


@click.group("schedule")
def schedule_group() -> None:
    """Periodic jobs: each slot fires one ordinary job, once, even across broker restarts."""


@schedule_group.command("add")
@click.argument("name", callback=_checked(check_schedule_name))
@click.argument("task")
@click.argument("payload", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--cron", callback=_checked(check_cron), help="e.g. '*/5 * * * *' (5 fields)")
@click.option("--every", callback=_checked(parse_every), help="a period: 30s, 5m, 1h, 1d")
@click.option("--tz", callback=_checked(check_tz), help="time zone of --cron [default: UTC]")
@click.option("--queue", help="[default: the task's queue]")
@click.option("--priority", type=click.IntRange(1, 10), help="1 most urgent … 10")
@click.option(
    "--catch-up",
    "catch_up",
    type=click.Choice([c.value for c in CatchUp]),
    default=CatchUp.ONE.value,
    show_default=True,
    help="missed slots (broker down): none skips them, one fires one, all fires each "
    "(at most 1,000)",
)
@click.option("--json", "json_text", metavar="JSON", help="task keyword arguments as an object")
@click.option("--paused", is_flag=True, help="add it paused")
@click.option("--replace", is_flag=True, help="replace a schedule of that name (keeps its state)")
@with_client
def add(
    client: Client,
    name: str,
    task: str,
    payload: tuple[str, ...],
    json_text: str | None,
    **options: Any,
) -> None:
    """Add schedule NAME: run TASK with KEY=VALUE arguments --cron EXPR or --every PERIOD."""
    if (options["cron"] is None) == (options["every"] is None):
        raise click.UsageError("give one of --cron EXPR and --every PERIOD")
    if options["tz"] is not None and options["every"] is not None:
        raise click.UsageError("--tz applies to --cron only (--every counts in UTC)")
    kwargs = parse_pairs(payload, json_text)
    info = client.schedule_add(name, task, kwargs=kwargs, **options)
    click.echo(f"schedule {name} added: {task} {info['when']}; next run {_at(info['next_run'])}")


@schedule_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@with_client
def list_(client: Client, as_json: bool) -> None:
    """List the schedules with their last and next run."""
    schedules = client.schedule_list()
    if as_json:
        echo_json(schedules)
        return
    if not schedules:
        if on_terminal():
            click.echo("no schedules (conveyor schedule add NAME TASK --every 1h)")
        return
    rows = [
        (
            s["name"],
            s["task"],
            s["when"],
            s["catch_up"],
            "paused" if s["paused"] else "active",
            _at(s["last_run"]),
            _at(s["next_run"]),
        )
        for s in schedules
    ]
    head = ("NAME", "TASK", "WHEN", "CATCH-UP", "STATE", "LAST RUN (UTC)", "NEXT RUN (UTC)")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _at(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@schedule_group.command("pause")
@click.argument("name")
@with_client
def pause(client: Client, name: str) -> None:
    """Fire no slot of NAME until resumed (the slots in between are skipped)."""
    client.schedule_pause(name)
    click.echo(f"schedule {name} paused")


@schedule_group.command("resume")
@click.argument("name")
@with_client
def resume(client: Client, name: str) -> None:
    """Fire NAME's slots again, from now on."""
    info = client.schedule_resume(name)
    click.echo(f"schedule {name} resumed; next run {_at(info['next_run'])}")


@schedule_group.command("remove")
@click.argument("name")
@with_client
def remove(client: Client, name: str) -> None:
    """Remove NAME (its jobs stay; a worker whose code declares it adds it back)."""
    client.schedule_remove(name)
    click.echo(f"schedule {name} removed")


@schedule_group.command("run-now")
@click.argument("name")
@wait_option("wait for the run and print its result (optionally at most DURATION)")
@with_client
def run_now(client: Client, name: str, wait: float | None) -> None:
    """Fire one run of NAME now, outside its slots; prints the job id."""
    handle = client.schedule_run_now(name)
    click.echo(handle.id)
    if wait is not None:
        print_result(wait_for(client, handle.id, wait))
