"""Retention policy: which backups to keep, and why. A pure function of (backups, policy).

The rules follow restic's ``forget``, which operators already know:

- ``keep_last N``: the N newest backups;
- ``keep_hourly/daily/weekly/monthly/yearly N``: walking from the newest
  backup back, the newest backup of each hour (day, ISO week, month, year),
  for the N most recent periods that have a backup;
- ``keep_within D``: every backup less than D older than the *newest* backup
  (not "now": a backup job that stopped running must not expire everything).

A backup is kept if any rule keeps it; each reason is reported. Periods are
taken in UTC so the result does not depend on where gc runs. A policy that
keeps nothing is refused: ``forget`` with no rule would delete every backup.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from casbackup.errors import UsageError


@dataclass(frozen=True)
class Policy:
    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: timedelta | None = None

    def __post_init__(self) -> None:
        for name in (
            "keep_last",
            "keep_hourly",
            "keep_daily",
            "keep_weekly",
            "keep_monthly",
            "keep_yearly",
        ):
            if getattr(self, name) < 0:
                raise UsageError(detail=f"{name.replace('_', '-')} must not be negative")

    @property
    def empty(self) -> bool:
        return not (
            self.keep_last
            or self.keep_hourly
            or self.keep_daily
            or self.keep_weekly
            or self.keep_monthly
            or self.keep_yearly
            or self.keep_within
        )

    def describe(self) -> str:
        parts = [
            f"{name.replace('_', '-')} {value}"
            for name, value in vars(self).items()
            if value and name != "keep_within"
        ]
        if self.keep_within:
            parts.append(f"keep-within {format_duration(self.keep_within)}")
        return ", ".join(parts) or "none"


@dataclass(frozen=True)
class Dated:
    name: str
    time: datetime


@dataclass
class Decision:
    keep: dict[str, list[str]] = field(default_factory=dict)  # name -> reasons, newest first
    remove: list[str] = field(default_factory=list)  # newest first
    order: list[str] = field(default_factory=list)  # every backup, newest first


_PERIODS: list[tuple[str, str, Callable[[datetime], object]]] = [
    ("keep_hourly", "hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("keep_daily", "daily", lambda t: (t.year, t.month, t.day)),
    ("keep_weekly", "weekly", lambda t: t.isocalendar()[:2]),
    ("keep_monthly", "monthly", lambda t: (t.year, t.month)),
    ("keep_yearly", "yearly", lambda t: t.year),
]


def apply_policy(backups: Sequence[Dated], policy: Policy) -> Decision:
    if policy.empty:
        raise UsageError(detail="no retention rule given: refusing to remove every backup")
    newest_first = sorted(backups, key=lambda b: (b.time, b.name), reverse=True)
    reasons: dict[str, list[str]] = {b.name: [] for b in newest_first}
    for position, b in enumerate(newest_first):
        if position < policy.keep_last:
            reasons[b.name].append(f"last {position + 1}")
    for attribute, label, period_of in _PERIODS:
        wanted = getattr(policy, attribute)
        seen: set[object] = set()
        for b in newest_first:
            if len(seen) >= wanted:
                break
            period = period_of(b.time.astimezone(UTC))
            if period not in seen:
                seen.add(period)
                reasons[b.name].append(f"{label} {_label(label, b.time)}")
    if policy.keep_within is not None and newest_first:
        horizon = newest_first[0].time - policy.keep_within
        for b in newest_first:
            if b.time >= horizon:
                reasons[b.name].append(f"within {format_duration(policy.keep_within)}")
    decision = Decision()
    for b in newest_first:
        decision.order.append(b.name)
        if reasons[b.name]:
            decision.keep[b.name] = reasons[b.name]
        else:
            decision.remove.append(b.name)
    return decision


def _label(kind: str, t: datetime) -> str:
    t = t.astimezone(UTC)
    if kind == "hourly":
        return t.strftime("%Y-%m-%d %H:00")
    if kind == "daily":
        return t.strftime("%Y-%m-%d")
    if kind == "weekly":
        year, week, _ = t.isocalendar()
        return f"{year}-W{week:02d}"
    if kind == "monthly":
        return t.strftime("%Y-%m")
    return t.strftime("%Y")


_DURATION = re.compile(r"(\d+)\s*([smhdwy])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_MAX_DURATION_SECONDS = 100 * _UNITS["y"]


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``1h30m``, ``7d``, ``2w``, ``1y`` (a year is 365 days)."""
    compact = text.strip().lower().replace(" ", "")
    if not compact or _DURATION.sub("", compact):
        raise UsageError(
            detail=f"invalid duration {text!r} (examples: 90s, 15m, 1h30m, 7d, 2w, 1y)"
        )
    terms = _DURATION.findall(compact)
    # Checked before int(): Python refuses to read an integer of over 4,300 digits.
    if (
        any(len(n) > 12 for n, _ in terms)
        or (seconds := sum(int(n) * _UNITS[u] for n, u in terms)) > _MAX_DURATION_SECONDS
    ):
        # timedelta overflows from 10^9 days, and datetimes go back to year 1 only.
        raise UsageError(detail=f"invalid duration {text[:40]!r}: longer than 100 years")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
