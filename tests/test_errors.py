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


def test_every_exit_code_is_documented() -> None:
    operations = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", operations, re.MULTILINE)}
    assert {int(code) for code in ExitCode} == documented
    assert {cls.exit_code for cls in all_error_classes()} <= set(ExitCode)
