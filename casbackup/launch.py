"""Process start-up: import the command line with the cyclic GC paused, then run it.

Importing the CLI builds a few hundred thousand long-lived objects (SQLAlchemy,
pydantic models, typer), and with the collector running it walks them again
and again while they are being built: ~80 ms of a ~0.7 s start-up on the
project's VM, paid by every cron run. None of it is garbage, so collection is
paused for the imports and what they built is moved to the permanent
generation (``gc.freeze``), where later collections do not walk it either.
Both ``casbackup`` (the script) and ``python -m casbackup`` start here.
"""

from __future__ import annotations

import gc
import sys
from typing import NoReturn


def main() -> NoReturn:
    gc.disable()
    try:
        from casbackup.cli.main import run
    finally:
        gc.freeze()
        gc.enable()
    sys.exit(run())
