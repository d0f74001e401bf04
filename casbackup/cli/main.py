"""The casbackup command line: global options, command registration, and the error edge.

This package is the only place typer is imported. Commands parse, call a
service and render; every ``CasbackupError`` becomes one line on stderr and
its exit code here, in ``run``, and nowhere else.

Every process imports the whole command line before it runs one command, and
cron pays that start-up every night. So the services only some commands use
(restore, verify, gc, the nightly run, clean) are imported inside those
commands, not at the top of their modules; ``tests/test_launch.py`` holds
the list.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from casbackup import __version__, interrupts
from casbackup.cli import backups, lifecycle, maintenance, restores, verifying
from casbackup.cli.context import AppContext
from casbackup.cli.output import one_line
from casbackup.errors import (
    CasbackupError,
    ConfigError,
    ExitCode,
    Interrupted,
    InterruptedLeaving,
)
from casbackup.runtime import tune_allocator

app = typer.Typer(
    name="casbackup",
    help="Content-addressed, deduplicating backups for ClickHouse.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        print(f"casbackup {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        str | None,  # not Path: typer would turn "" into Path("."), and an empty value is an error
        typer.Option(
            "--config",
            "-c",
            envvar="CASBACKUP_CONFIG",
            metavar="PATH",
            help="Config file (TOML).",
            show_default=False,
        ),
    ] = None,
    repo: Annotated[
        str | None,
        typer.Option(
            "--repo", envvar="CASBACKUP_REPO", help="Repository: a directory or s3://bucket/prefix."
        ),
    ] = None,
    clickhouse: Annotated[
        str | None,
        typer.Option(
            "--clickhouse",
            envvar="CASBACKUP_CLICKHOUSE",
            help="clickhouse://user@host:port or chdb:///path.",
        ),
    ] = None,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv: debug).")
    ] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars or notes.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks of internal errors.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    _refuse_empty(ctx, config=config, repo=repo, clickhouse=clickhouse)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogLine())
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        handlers=[handler],
    )
    # clickhouse-driver logs each failed connection attempt as a warning with
    # its traceback; casbackup reports the failure itself, in one line.
    logging.getLogger("clickhouse_driver").setLevel(logging.DEBUG if verbose > 1 else logging.ERROR)
    # The AWS libraries' debug output holds credentials: STS responses with
    # their secret keys, the session token header of every request. -vv
    # stops at their INFO lines (which credentials were found, retries).
    for library in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(library).setLevel(logging.INFO if verbose > 1 else logging.WARNING)
    context = AppContext(
        config_path=Path(config) if config is not None else None,
        repo_override=repo,
        clickhouse_override=clickhouse,
        quiet=quiet,
        warnings=ctx.obj if isinstance(ctx.obj, list) else [],  # run()'s: it sets the exit code
    )
    ctx.obj = context
    ctx.meta["debug"] = debug
    ctx.call_on_close(context.close)


def _refuse_empty(
    ctx: typer.Context, *, config: str | None, repo: str | None, clickhouse: str | None
) -> None:
    """An empty value on the command line is a mistake, typically `--repo "$REPO"` with REPO unset.

    click ignores empty environment variables (CASBACKUP_REPO= means "not
    set"), so an empty value from an option was typed. Taken literally,
    `--repo ""` is the current directory, where `init` would write a
    repository. A blank variable (spaces only) does reach here; it is named
    as the variable it came from, since the operator typed no option.
    """
    typed: list[str] = []
    blank_variables: list[str] = []
    for name, option, variable, value in (
        ("config", "--config", "CASBACKUP_CONFIG", config),
        ("repo", "--repo", "CASBACKUP_REPO", repo),
        ("clickhouse", "--clickhouse", "CASBACKUP_CLICKHOUSE", clickhouse),
    ):
        if value is None or value.strip():
            continue
        source = ctx.get_parameter_source(name)
        if source is not None and source.name == "ENVIRONMENT":
            blank_variables.append(variable)
        else:
            typed.append(option)
    if typed:
        raise ConfigError(
            detail=f"{' and '.join(typed)} given an empty value (an unset shell variable?); "
            "give a value or leave the option out"
        )
    if blank_variables:
        raise ConfigError(
            detail=f"{' and '.join(blank_variables)} holds only spaces; "
            "give a value or unset it (an empty variable counts as not set)"
        )


backups.register(app)
restores.register(app)
lifecycle.register(app)
verifying.register(app)
maintenance.register(app)


def run(argv: list[str] | None = None) -> int:
    """Entry point: returns the process exit status (also used by the tests)."""
    tune_allocator()
    # systemd stops units with SIGTERM: unwind like Ctrl-C so shadows and
    # temporary parts are removed on the way out.
    restore_signals = interrupts.install()
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    shown: list[str] = []  # warnings the context showed before the command's own report
    try:
        result = app(args=argv, prog_name="casbackup", standalone_mode=False, obj=shown)
        code = int(result) if isinstance(result, int) else ExitCode.OK
        return ExitCode.WARNING if code == ExitCode.OK and shown else code
    except CasbackupError as exc:
        _error("; ".join([exc.message, *_notes(exc)]))
        return exc.exit_code
    except interrupts.SignalReceived as received:
        left = _notes(received)
        error = (
            InterruptedLeaving(signal=received.name, left="; ".join(left))
            if left
            else Interrupted(signal=received.name)
        )
        _error(error.message)
        return error.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        _error("aborted")
        return ExitCode.INTERRUPTED
    except typer.TyperException as exc:  # click's usage errors (typer vendors click)
        return _usage_error(exc)
    except Exception as exc:  # the last line of defence: one line, never a traceback
        if debug:
            raise
        _error(f"internal error: {type(exc).__name__}: {exc} (run with --debug for details)")
        return ExitCode.INTERNAL
    finally:
        restore_signals()


class _LogLine(logging.Formatter):
    """``casbackup: warning: ...``: the form of the CLI's own warnings and errors, one to grep."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return f"casbackup: {record.levelname.lower()}: {record.message}"


def _usage_error(exc: typer.TyperException) -> int:
    """click's errors as one line like every other, with where the help is; exit 2 kept.

    click would print a usage block, a "Try ... --help" line and "Error: ...".
    Everything needed is public on the exception: ``format_message()``,
    ``exit_code`` and, for usage errors, the ``ctx`` with the command path.
    A group called with nothing (``casbackup``, ``casbackup catalog``) raises
    a usage error whose message is the group's help: that is shown as click
    shows it, since help is what the caller gets.
    """
    message = exc.format_message()
    ctx = getattr(exc, "ctx", None)
    if ctx is not None and message == ctx.get_help():
        exc.show()  # type: ignore[attr-defined]  # every click exception has show()
        return exc.exit_code or ExitCode.USAGE
    line = "; ".join(part.strip() for part in message.splitlines() if part.strip()).rstrip(".")
    if ctx is not None and ctx.help_option_names:
        line += f" (see '{ctx.command_path} {ctx.help_option_names[0]}')"
    _error(line)
    return exc.exit_code or ExitCode.USAGE


def _notes(exc: BaseException) -> list[str]:
    """What a layer below added on the way up (``add_note``): what the failed run left behind."""
    return list(getattr(exc, "__notes__", ()))


def _error(message: str) -> None:
    sys.stderr.write(f"casbackup: error: {one_line(message)}\n")
    sys.stderr.flush()
