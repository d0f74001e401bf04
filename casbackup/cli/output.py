"""Rendering: human tables and progress on a terminal, JSON for scripts."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


@cache
def stderr() -> Console:
    """rich's console on stderr, made on first use.

    A cron run that prints no note and no progress bar then never imports
    rich (~20 ms of start-up).
    """
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def ratio(logical: int, stored: int) -> str:
    if stored == 0:
        return "∞" if logical else "-"
    return f"{logical / stored:.1f}x"


def emit_json(document: Any) -> None:
    sys.stdout.write(
        json.dumps(document, indent=2, default=_json_default, ensure_ascii=False) + "\n"
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def print_table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], *, right: Sequence[str] = ()
) -> None:
    """Aligned columns; never wrapped when piped, so grep and awk see one line per row.

    Cells are ``Text``, never markup: they hold table and backup names, and
    rich would read a table named ``[/]bad`` as a closing tag (MarkupError)
    and ``[bold]x`` as a style, ``:smile:`` as an emoji. Control characters
    in them are escaped (``one_line``).
    """
    from rich.console import Console
    from rich.table import Table  # loaded when a command prints a table, not at start-up
    from rich.text import Text

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 100_000)
    table = Table(box=None, header_style="bold" if sys.stdout.isatty() else None, pad_edge=False)
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*[Text(one_line(str(cell))) for cell in row])
    console.print(table)


class ByteProgress:
    """A progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and _may_be_terminal() and stderr().is_terminal
        self._progress: Any = None
        self._task: Any = None

    @contextmanager
    def running(self, description: str) -> Iterator[ByteProgress]:
        if not self.enabled:
            yield self
            return
        from rich.progress import (  # only on a terminal: not worth its start-up cost otherwise
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}", markup=False),  # a table's name
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=stderr(),
            transient=True,
        )
        with self._progress:
            self._task = self._progress.add_task(description, total=None)
            yield self
        self._progress = None

    def set_total(self, total: int | None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=total or None)

    def describe(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text)

    def advance(self, nbytes: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, nbytes)


def _may_be_terminal() -> bool:
    """A check that needs no rich: false only where rich would say no terminal too.

    rich's own rules (``Console.is_terminal``): TTY_COMPATIBLE=1 or a
    non-empty FORCE_COLOR make a terminal of anything.
    """
    if os.environ.get("TTY_COMPATIBLE") == "1" or os.environ.get("FORCE_COLOR"):
        return True
    return sys.stderr is not None and sys.stderr.isatty()


# C0 controls and DEL: a newline would split a one-line message, an escape
# sequence from a hostile manifest (a table name, a version) would reach the
# operator's terminal. C1 controls (0x80-0x9f) are escapes on some terminals.
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


def one_line(message: str) -> str:
    """``message`` with every control character written as its escape, as repr() would."""
    return message.translate(_CONTROLS)


def note(message: str) -> None:
    """A line for humans on stderr (keeps stdout clean for JSON and pipes).

    Plain text, not markup (messages carry table names, see print_table),
    and one line even when stderr is a log file, where rich would otherwise
    wrap at 80 columns.
    """
    from rich.text import Text

    stderr().print(Text(one_line(message)), soft_wrap=True)


def warn(message: str) -> None:
    """A warning on stderr, as the log's warnings read (``casbackup: warning: ...``): one form to grep."""
    note(f"casbackup: warning: {message}")
