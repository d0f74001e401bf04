"""Process start-up: import the command line with the cyclic GC paused, then run it.

Importing the CLI builds a few hundred thousand long-lived objects (SQLAlchemy,
pydantic models, typer). With the collector running, it walks them again and
again while they are being built (~80 ms of a ~0.7 s start-up on the
project's VM), then in every collection of the command and at exit. None of
it is garbage, so collection is paused for the imports and what they built
is moved to the permanent generation (``gc.freeze``), where no collection
walks it: about 0.3 s off every command there, paid by every cron run
(docs/design.md has the figures). Both ``casbackup`` (the script) and
``python -m casbackup`` start here.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from typing import NoReturn


def load_cli() -> Callable[[list[str] | None], int]:
    """Import the command line with the collector paused, and freeze what it built."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        from casbackup.cli.main import run
    finally:
        gc.freeze()
        if collecting:
            gc.enable()
    return run


def main() -> NoReturn:
    try:
        run = load_cli()
    except KeyboardInterrupt:
        # Ctrl-C before the command line installed its handlers: Python's
        # default would print a traceback of whatever import it hit.
        from casbackup.errors import Interrupted

        error = Interrupted(signal="SIGINT")
        sys.stderr.write(f"casbackup: error: {error.message}\n")
        sys.exit(error.exit_code)
    sys.exit(run(None))
