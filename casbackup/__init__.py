"""casbackup: content-addressed, deduplicating backups for ClickHouse."""

# The one place the version lives (pyproject.toml reads it from here): looking
# it up through importlib.metadata cost 56 ms of every command's start-up.
__version__ = "0.1.0"
