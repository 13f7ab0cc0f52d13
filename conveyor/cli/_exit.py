"""Exit codes of the client commands, and the click exceptions that carry them.

====  ==================================================================
0     done: the job completed, the command did what it says
1     failed: the job is dead or cancelled, or the broker refused the request
2     usage error: a bad option or argument (click's own code)
3     cannot use the broker: unreachable, TLS or token problem, bad configuration
4     not finished yet: the job is still queued/running (or --wait ran out of time)
====  ==================================================================
"""

from __future__ import annotations

import click

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_DONE = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells expect after Ctrl-C


class Failed(click.ClickException):
    """The job failed or the broker refused: exit 1."""

    exit_code = EXIT_FAILED


class Unreachable(click.ClickException):
    """No usable broker (connection, TLS, token, configuration): exit 3."""

    exit_code = EXIT_UNREACHABLE


class NotDone(click.ClickException):
    """The job is not final yet: exit 4."""

    exit_code = EXIT_NOT_DONE
