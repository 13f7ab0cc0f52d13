"""conveyor keygen: make a key for end-to-end payload encryption."""

from __future__ import annotations

import os
from pathlib import Path

import click

from conveyor.cli._client import errors_as_exit
from conveyor.security.payload import generate_key, load_payload_keys

KEY_FILE_HEADER = (
    "# Conveyor payload keys: one a line, the first encrypts, all decrypt.\n"
    "# Give this file to producers and workers only, never to the broker.\n"
)


def _write_private(path: Path, text: str, *, replace: bool) -> None:
    """Write ``text`` to ``path`` with mode 0600; atomically when replacing a file."""
    if not replace:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _is_key_line(line: str) -> bool:
    return bool(line.strip()) and not line.lstrip().startswith("#")


@click.command("keygen")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write a new key file (mode 0600) instead of printing the key",
)
@click.option("--force", is_flag=True, help="with --out: replace an existing file")
@click.option(
    "--add-to",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="FILE",
    help="add a new key to an existing key file, after the others (decrypt-only: rotation step 1)",
)
@click.option(
    "--primary", is_flag=True, help="with --add-to: add it first, as the key that encrypts"
)
def keygen_command(out: Path | None, force: bool, add_to: Path | None, primary: bool) -> None:
    """Make a payload encryption key (share it with producers and workers, never the broker).

    \b
    conveyor keygen                        print a new key
    conveyor keygen --out payload.keys     write a new key file (mode 0600)
    conveyor keygen --add-to payload.keys  add a decrypt-only key (then deploy, then promote)
    """
    if out is not None and add_to is not None:
        raise click.UsageError("give --out or --add-to, not both")
    if primary and add_to is None:
        raise click.UsageError("--primary goes with --add-to")
    key = generate_key()
    if add_to is not None:
        _add_key(add_to, key, primary)
        return
    if out is None:
        click.echo(key)
        return
    if out.exists() and not force:
        raise click.ClickException(f"{out} exists; use --force to replace it (old jobs then fail)")
    _write_private(out, KEY_FILE_HEADER + key + "\n", replace=out.exists())
    click.echo(f"wrote {out} (mode 0600)", err=True)


def _add_key(path: Path, key: str, primary: bool) -> None:
    with errors_as_exit(unreachable=1):  # a local file: not the broker's exit code
        old = load_payload_keys(path)  # refuse to edit a file we could not read back
    lines = path.read_text("ascii").splitlines()
    key_lines = [i for i, ln in enumerate(lines) if _is_key_line(ln)]
    lines.insert(key_lines[0] if primary else key_lines[-1] + 1, key)
    _write_private(path, "\n".join(lines) + "\n", replace=True)
    if primary:
        note = "it now encrypts; every producer and worker must have it before they use this file"
    else:
        note = "decrypt-only for now; once every host has it, move it to the top (see docs)"
    click.echo(f"{path}: new key added ({old.key_count + 1} keys); {note}", err=True)
