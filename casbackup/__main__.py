"""``python -m casbackup``."""

from casbackup.cli.main import entry

entry()
