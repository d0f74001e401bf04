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

By default the rules apply to each host's backups on their own (restic's
``--group-by host``): hosts that share a repository (shards, replicas) run
the same nightly job, and one policy over all of them let each night's run
on one host remove the backup another host made that day, or all of them
with ``keep_last``.

A backup dated more than a day ahead of ``now`` (a host whose clock was
wrong, or a manifest written to be) takes no part in the rules: as the
newest backup it would anchor ``keep_within`` in the future and expire every
real backup, and take the first ``keep_last`` and period slots. It is kept,
and named so that someone looks at it.
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
    per_host: bool = True  # the rules apply to each host's backups apart

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
            if value and name.startswith("keep_") and name != "keep_within"
        ]
        if self.keep_within:
            parts.append(f"keep-within {format_duration(self.keep_within)}")
        if not parts:
            return "none"
        return ", ".join(parts) + (", per host" if self.per_host else ", across hosts")


@dataclass(frozen=True)
class Dated:
    name: str
    time: datetime
    host: str = ""


# Clock skew between hosts writing to one repository is seconds or minutes;
# a day ahead is a wrong clock or a forged date.
FUTURE_SLACK = timedelta(days=1)
# A host whose newest backup is this old has stopped backing up here (gone,
# renamed, or a container given a new hostname each run): its backups are
# kept by its own rules for good, which someone should know.
IDLE_HOST = timedelta(days=7)


@dataclass
class Decision:
    keep: dict[str, list[str]] = field(default_factory=dict)  # name -> reasons, newest first
    remove: list[str] = field(default_factory=list)  # newest first
    order: list[str] = field(default_factory=list)  # every backup, newest first
    future: list[Dated] = field(default_factory=list)  # kept aside from the rules, newest first
    hosts: dict[str, str] = field(default_factory=dict)  # name -> the host that made it
    idle_hosts: list[tuple[str, int, datetime]] = field(
        default_factory=list
    )  # host, backups, newest

    def notes(self) -> list[str]:
        if not self.idle_hosts:
            return []
        shown = ", ".join(
            f"{host or '(no name)'} ({count} backup{'s' if count > 1 else ''}, newest "
            f"{newest.astimezone(UTC):%Y-%m-%d})"
            for host, count, newest in self.idle_hosts[:5]
        )
        more = f" and {len(self.idle_hosts) - 5} more" if len(self.idle_hosts) > 5 else ""
        return [
            f"{len(self.idle_hosts)} host{'s' if len(self.idle_hosts) > 1 else ''} made no "
            f"backup in {IDLE_HOST.days} days, and their own rules keep theirs: "
            f"{shown}{more}; `forget --across-hosts` or `delete` removes them once they are "
            "not needed (a host that gets a new name each run: give it a fixed one)"
        ]

    def warnings(self) -> list[str]:
        return [
            f"backup {b.name} is dated {_stamp(b.time)}, more than "
            f"{format_duration(FUTURE_SLACK)} ahead of this host's clock: retention keeps it and "
            f"applies its rules to the other backups; check the clock of the host that wrote "
            f"it, and `casbackup delete {b.name}` if it is not wanted"
            for b in self.future
        ]


_PERIODS: list[tuple[str, str, Callable[[datetime], object]]] = [
    ("keep_hourly", "hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("keep_daily", "daily", lambda t: (t.year, t.month, t.day)),
    ("keep_weekly", "weekly", lambda t: t.isocalendar()[:2]),
    ("keep_monthly", "monthly", lambda t: (t.year, t.month)),
    ("keep_yearly", "yearly", lambda t: t.year),
]


def apply_policy(backups: Sequence[Dated], policy: Policy, now: datetime | None = None) -> Decision:
    """``now`` None applies the rules to every backup, whatever its date."""
    if policy.empty:
        raise UsageError(detail="no retention rule given: refusing to remove every backup")
    if not policy.per_host:
        return _apply(backups, policy, now)
    hosts: dict[str, list[Dated]] = {}
    for b in backups:
        hosts.setdefault(b.host, []).append(b)
    decision = Decision()
    kept: dict[str, list[str]] = {}
    for group in hosts.values():
        part = _apply(group, policy, now)
        kept.update(part.keep)
        decision.future += part.future
    newest_first = sorted(backups, key=_newest_first, reverse=True)
    decision.order = [b.name for b in newest_first]
    decision.keep = {name: kept[name] for name in decision.order if name in kept}
    decision.remove = [name for name in decision.order if name not in kept]
    decision.future.sort(key=_newest_first, reverse=True)
    decision.hosts = {b.name: b.host for b in backups}
    if now is not None:
        for host, group in sorted(hosts.items()):
            newest = max(b.time for b in group)
            if newest < now - IDLE_HOST:
                decision.idle_hosts.append((host, len(group), newest))
    return decision


def _newest_first(b: Dated) -> tuple[datetime, str]:
    return (b.time, b.name)


def _apply(backups: Sequence[Dated], policy: Policy, now: datetime | None) -> Decision:
    """The rules over one group of backups."""
    ordered = sorted(backups, key=_newest_first, reverse=True)
    future = [b for b in ordered if now is not None and b.time > now + FUTURE_SLACK]
    aside = set(future)
    newest_first = [b for b in ordered if b not in aside]
    reasons: dict[str, list[str]] = {b.name: [] for b in ordered}
    for b in future:
        reasons[b.name].append(f"dated in the future ({_stamp(b.time)})")
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
    decision = Decision(future=future, hosts={b.name: b.host for b in ordered})
    for b in ordered:
        decision.order.append(b.name)
        if reasons[b.name]:
            decision.keep[b.name] = reasons[b.name]
        else:
            decision.remove.append(b.name)
    return decision


def _stamp(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


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
