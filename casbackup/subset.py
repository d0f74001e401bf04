"""The syntax of a read-data subset (``verify --subset``, ``[verify] read_data_subset``).

Apart from verify.py so that the config can check the setting when it is
loaded without importing the verifier (the catalog, SQLAlchemy, ClickHouse):
a typo in the config must stop `run` before it backs up, not after its gc.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$", re.IGNORECASE)
_GROUP = re.compile(r"^(\d+)/(\d+)$")
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


@dataclass(frozen=True)
class Subset:
    """Exactly one of the three set: a share of the pack-id space, a group n of m, or bytes."""

    percent: str | None = None  # as written, for the report ("5")
    share: float = 0.0
    group: tuple[int, int] | None = None
    budget: float | None = None


def parse_subset(text: str) -> Subset:
    """``5%``, ``1/7`` or a size (``2G``); ValueError says what is wrong, for either caller to frame."""
    text = text.strip()
    if m := _PERCENT.match(text):
        share = float(m.group(1)) / 100
        if not 0 < share <= 1:
            raise ValueError("a percentage must be above 0% and at most 100%")
        return Subset(percent=m.group(1), share=share)
    if m := _GROUP.match(text):
        n, total = int(m.group(1)), int(m.group(2))
        if not 1 <= n <= total:
            raise ValueError("a group n/m needs 1 <= n <= m")
        return Subset(group=(n, total))
    if m := _SIZE.match(text):
        return Subset(budget=float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise ValueError("use a percentage (5%), a group (1/7) or a size (2G)")
