"""submit and result: send a job, wait for it, print its result.

``--wait`` takes an optional duration: ``--wait`` alone waits as long as it takes,
``--wait 30s`` (or ``--wait=30``) at most that long. Before waiting, ``submit`` warns when
no connected worker offers the task (with a did-you-mean from what workers do offer).
Ctrl-C during a wait says how to wait again and exits 130; the job itself goes on. Exit
codes: :mod:`conveyor.cli._exit`.
"""

from __future__ import annotations

import difflib
import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from conveyor.cli._client import with_client
from conveyor.cli._exit import EXIT_INTERRUPTED, Failed, NotDone
from conveyor.cli._util import duration_option, parse_duration
from conveyor.client.sync import Client
from conveyor.errors import JobFailed
from conveyor.job import Job, JobState
from conveyor.security.payload import is_sealed, load_payload_keys

F = TypeVar("F", bound=Callable[..., Any])
FOREVER = math.inf


def payload_key_option(fn: F) -> F:
    """--payload-key-file: seal what is sent and open what comes back with these keys."""
    return click.option(
        "--payload-key-file",
        type=click.Path(exists=True, dir_okay=False),
        envvar="CONVEYOR_PAYLOAD_KEY_FILE",
        help="end-to-end payload encryption keys (conveyor keygen) [env CONVEYOR_PAYLOAD_KEY_FILE]",
    )(fn)


def use_payload_keys(client: Client, key_file: str | None) -> None:
    if key_file is not None:
        client.cipher = load_payload_keys(key_file)


def _wait_value(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """None: do not wait; FOREVER: ``--wait`` alone; else the seconds of ``--wait 30s``."""
    if value is None:
        return None
    if value == "forever":
        return FOREVER
    try:
        return parse_duration(value)
    except click.BadParameter:
        raise click.BadParameter(
            f"{value!r} is not a duration (e.g. 30, 30s, 5m); --wait takes an optional one, "
            "so put --wait after the payload or write --wait=30s",
            ctx,
            param,
        ) from None


def wait_option(help_text: str) -> Callable[[F], F]:
    return click.option(
        "--wait",
        is_flag=False,
        flag_value="forever",
        default=None,
        metavar="[DURATION]",
        callback=_wait_value,
        help=help_text,
    )


def read_json_option(value: str) -> str:
    """--json's text: ``-`` reads stdin, ``@FILE`` reads the file, else the text itself."""
    if value == "-":
        return sys.stdin.read()
    if value.startswith("@"):
        try:
            return Path(value[1:]).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise click.BadParameter(
                f"cannot read {value[1:]}: {why}", param_hint="--json"
            ) from None
    return value


def parse_pairs(pairs: tuple[str, ...], json_text: str | None) -> dict[str, Any]:
    """``key=value`` pairs (values parsed as JSON when they parse, else strings), after
    the --json object (text, ``@FILE`` or ``-`` for stdin); a pair wins over --json."""
    payload: dict[str, Any] = {}
    if json_text is not None:
        try:
            loaded = json.loads(read_json_option(json_text))
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--json") from exc
        if not isinstance(loaded, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--json")
        payload.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="PAYLOAD")
        try:
            payload[key] = json.loads(value)
        except json.JSONDecodeError:
            payload[key] = value
    return payload


def print_result(job: Job) -> None:
    """The result as JSON (exit 0); Failed (exit 1) for a dead or cancelled job."""
    if job.state is JobState.COMPLETED:
        if is_sealed(job.result):
            raise Failed(
                f"the result of job {job.id} is encrypted; pass --payload-key-file with its key"
            )
        click.echo(json.dumps(job.result, default=str))
        return
    raise Failed(str(JobFailed(job)))  # "job ID is dead: RuntimeError: kaput"


@contextmanager
def waiting_for(job_id: str) -> Iterator[None]:
    """Ctrl-C inside: say how to wait for ``job_id`` again, and exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo(
            f"\ninterrupted: job {job_id} goes on without you; wait for it again with\n"
            f"  conveyor result {job_id} --wait",
            err=True,
        )
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None


def wait_for(client: Client, job_id: str, timeout: float) -> Job:
    """The job once final; NotDone (exit 4) after ``timeout``; exit 130 on Ctrl-C."""
    with waiting_for(job_id):
        job = client.wait(job_id, None if timeout == FOREVER else timeout)
    if not job.state.is_final:
        raise NotDone(f"job {job_id} is still {job.state.value} after {timeout:g}s")
    return job


def warn_if_nobody_offers(client: Client, job: Job) -> None:
    """Say so on stderr when no connected worker would take ``job`` (the wait could be long)."""
    workers: list[dict[str, Any]] = client.stats()["workers"]
    offering = [w for w in workers if job.task in w["tasks"]]
    if not offering:
        offered = sorted({t for w in workers for t in w["tasks"]})
        close = difflib.get_close_matches(job.task, offered, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        who = "no connected worker offers" if workers else "no worker is connected to run"
        click.echo(
            f"warning: {who} task {job.task!r}{hint}; waiting anyway (Ctrl-C stops waiting)",
            err=True,
        )
    elif job.queue and not any(job.queue in w["queues"] for w in offering):
        queues = sorted({q for w in offering for q in w["queues"]})
        click.echo(
            f"warning: the workers offering task {job.task!r} serve queues "
            f"{', '.join(queues)}, not {job.queue!r}; waiting anyway (Ctrl-C stops waiting)",
            err=True,
        )


@click.command()
@click.argument("task")
@click.argument("payload", nargs=-1)
@click.option(
    "--json",
    "json_text",
    metavar="JSON|@FILE|-",
    help="kwargs as a JSON object; @FILE reads it from a file, - from stdin",
)
@click.option("--priority", type=click.IntRange(1, 10), help="1 most urgent … 10 least [5]")
@click.option("--queue", help="queue name [the task's queue]")
@click.option("--delay", callback=duration_option, help="run after a delay: 30, 30s, 5m, 2h")
@click.option("--retries", type=click.IntRange(0, 100), help="retries after a failure [3]")
@click.option("--timeout", "job_timeout", callback=duration_option, help="job time limit")
@click.option("--unique-key", help="dedupe: return the live job with this key instead")
@click.option(
    "--concurrency-key",
    help="at most the limit set for this key run at once (conveyor limits set key:PREFIX N)",
)
@click.option("--id", "job_id", help="choose the job id (a resubmit is then idempotent)")
@click.option(
    "--after",
    "after",
    multiple=True,
    metavar="JOB_ID",
    help="run only once this job completed (repeat for several); cancelled if it fails",
)
@wait_option("wait for the result and print it; with a DURATION (30, 30s, 5m), at most that long")
@payload_key_option
@with_client
def submit(
    client: Client,
    task: str,
    payload: tuple[str, ...],
    json_text: str | None,
    wait: float | None,
    job_timeout: float | None,
    payload_key_file: str | None,
    **options: Any,
) -> None:
    """Submit a job: conveyor submit fibonacci n=30 --priority 1 --wait

    Prints the job id; with --wait, the result instead (exit 0 completed, 1 failed,
    4 still not done after the --wait DURATION).
    """
    use_payload_keys(client, payload_key_file)
    kwargs = parse_pairs(payload, json_text)
    options["after"] = list(options.get("after") or ()) or None
    handle = client.submit(task, kwargs=kwargs, timeout=job_timeout, **options)
    if wait is None:
        click.echo(handle.id)
        return
    with waiting_for(handle.id):  # Ctrl-C from here on says how to wait again
        warn_if_nobody_offers(client, handle.get())
        job = wait_for(client, handle.id, wait)
    print_result(job)


@click.command()
@click.argument("job_id")
@wait_option("wait until the job is final; with a DURATION (30, 30s, 5m), at most that long")
@click.option(
    "--timeout", callback=duration_option, metavar="DURATION", help="what --wait DURATION says"
)
@payload_key_option
@with_client
def result(
    client: Client,
    job_id: str,
    wait: float | None,
    timeout: float | None,
    payload_key_file: str | None,
) -> None:
    """Print a job's result (JSON); exit 1 if it failed, 4 if it is not done yet."""
    use_payload_keys(client, payload_key_file)
    if wait is not None:
        job = wait_for(client, job_id, timeout if timeout is not None else wait)
    else:
        job = client.get(job_id)
    if not job.state.is_final:
        raise NotDone(f"job {job_id} is {job.state.value}; use --wait to wait")
    print_result(job)
