"""Every error class renders its message and carries a documented exit code (borg's test)."""

from __future__ import annotations

import re
import string
from pathlib import Path

import casbackup.errors as errors
from casbackup.errors import CasbackupError, ExitCode


def all_error_classes() -> list[type[CasbackupError]]:
    return [
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, CasbackupError)
    ]


def test_every_error_renders_from_its_fields() -> None:
    for cls in all_error_classes():
        template = (cls.__doc__ or "").strip().splitlines()[0]
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
        error = cls(**{name: f"<{name}>" for name in fields})
        assert error.message and "{" not in error.message, cls.__name__
        for name in fields:
            assert f"<{name}>" in error.message, (cls.__name__, name)


def test_missing_field_does_not_hide_the_error() -> None:
    assert "ObjectNotFound" in errors.ObjectNotFound().message


def test_a_field_of_megabytes_is_cut_to_a_line_a_log_can_take() -> None:
    """Fields carry what repository data says (a hostile columns.txt's type of 8 MiB)."""
    hostile = "Enum8(" + "x" * 8_000_000 + "'end' = 1)"
    message = errors.ColumnTypeConflict(
        table="db.t", column="c", table_type="Int64", backup_type=hostile, more=""
    ).message
    assert len(message) < 3 * errors.FIELD_MAX
    assert f"Enum8({'x' * 100}" in message and "x'end' = 1)" in message
    assert f"[{len(hostile) - errors.FIELD_MAX} characters]" in message
    assert errors.clip("y" * errors.FIELD_MAX) == "y" * errors.FIELD_MAX
    assert errors.clip(12345) == 12345


def test_every_exit_code_is_documented() -> None:
    operations = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", operations, re.MULTILINE)}
    assert {int(code) for code in ExitCode} == documented
    assert {cls.exit_code for cls in all_error_classes()} <= set(ExitCode)
