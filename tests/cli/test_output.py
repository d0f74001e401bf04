"""Rendering: names from ClickHouse and the repository are printed as they are, never as markup."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from casbackup.cli import output

NAMES = ["shop.[/]bad", "shop.[bold]secret", "shop.:smile:"]


@pytest.fixture
def fresh_console() -> Iterator[None]:
    """output.stderr() is made once per process; these tests change what it sees."""
    output.stderr.cache_clear()
    yield
    output.stderr.cache_clear()


def test_table_cells_are_text(capsys: pytest.CaptureFixture[str]) -> None:
    output.print_table(["table", "rows"], [[name, 1] for name in NAMES], right=["rows"])
    printed = capsys.readouterr().out
    for name in NAMES:
        assert f"{name}  " in printed


def test_notes_are_text_on_one_line(
    capsys: pytest.CaptureFixture[str], fresh_console: None
) -> None:
    message = "restored " + ", ".join(NAMES * 10)  # longer than rich's 80 columns off a terminal
    output.note(message)
    assert capsys.readouterr().err == message + "\n"


def test_the_progress_bar_describes_a_table_by_its_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fresh_console: None
) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich's rule, which casbackup's own check follows
    bar = output.ByteProgress(enabled=True)
    assert bar.enabled
    with bar.running("backing up"):
        for name in reversed(NAMES):  # "[/]bad" last: the frame drawn when the bar stops
            bar.describe(name)
    assert "shop.[/]bad" in capsys.readouterr().err


@pytest.mark.parametrize(("variable", "value"), [("TTY_COMPATIBLE", "1"), ("FORCE_COLOR", "1")])
def test_progress_follows_richs_rules_for_a_terminal(
    monkeypatch: pytest.MonkeyPatch, fresh_console: None, variable: str, value: str
) -> None:
    """FORCE_COLOR made rich draw, but casbackup's cheap pre-check (it read FORCE_TERMINAL,
    which nothing sets) had already switched the bar off."""
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv(variable, value)
    assert output.ByteProgress(enabled=True).enabled
