"""The ``conveyor`` command."""

from __future__ import annotations

import click

from conveyor.cli.broker_cmd import broker
from conveyor.cli.certs import certs_command
from conveyor.cli.db import db_group
from conveyor.cli.dev import dev
from conveyor.cli.dlq import dlq
from conveyor.cli.jobs import cancel, jobs_command, stats, status
from conveyor.cli.keys import keygen_command
from conveyor.cli.limits import limits_group
from conveyor.cli.ping import ping
from conveyor.cli.queues import queue_group
from conveyor.cli.schedules import schedule_group
from conveyor.cli.submit import result, submit
from conveyor.cli.tokens import token_group
from conveyor.cli.top import top
from conveyor.cli.worker_cmd import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="conveyor")
def main() -> None:
    """Conveyor: a fast, durable, secure distributed task queue."""


for command in (
    broker,
    worker,
    dev,
    submit,
    result,
    status,
    cancel,
    jobs_command,
    stats,
    top,
    ping,
    dlq,
    queue_group,
    limits_group,
    schedule_group,
    certs_command,
    token_group,
    keygen_command,
    db_group,
):
    main.add_command(command)

try:  # the benchmark pulls in rich progress bars; keep it optional at import time
    from conveyor.bench import bench

    main.add_command(bench)
except ImportError:  # pragma: no cover
    pass
