"""Retention against fixed calendars: expected keep sets and reasons (table-driven)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from casbackup.errors import UsageError
from casbackup.retention import Dated, Policy, apply_policy, format_duration, parse_duration


def nightly(days: int, start: datetime = datetime(2026, 1, 1, 2, 15, tzinfo=UTC)) -> list[Dated]:
    """One backup every night at 02:15 UTC, named by date."""
    return [
        Dated((start + timedelta(days=i)).strftime("%Y-%m-%d"), start + timedelta(days=i))
        for i in range(days)
    ]


def hourly(hours: int) -> list[Dated]:
    start = datetime(2026, 3, 1, 0, 30, tzinfo=UTC)
    return [
        Dated((start + timedelta(hours=i)).strftime("%m-%dT%H"), start + timedelta(hours=i))
        for i in range(hours)
    ]


CASES = [
    ("last 3", nightly(10), Policy(keep_last=3), {"2026-01-10", "2026-01-09", "2026-01-08"}),
    (
        "daily 7 of 60 nights",
        nightly(60),
        Policy(keep_daily=7),
        {f"2026-02-{d:02d}" for d in range(23, 30) if d <= 28} | {"2026-03-01"},
    ),
    (
        "weekly 4: newest backup of each ISO week",
        nightly(60),
        Policy(keep_weekly=4),
        # 2026-03-01 is a Sunday: weeks end on Sundays; the newest of each of the last 4 weeks
        {"2026-03-01", "2026-02-22", "2026-02-15", "2026-02-08"},
    ),
    ("monthly 3", nightly(100), Policy(keep_monthly=3), {"2026-04-10", "2026-03-31", "2026-02-28"}),
    (
        "yearly 2 across a year end",
        nightly(400),
        Policy(keep_yearly=2),
        {"2027-02-04", "2026-12-31"},
    ),
    (
        "daily 2 + weekly 2 + monthly 2 overlap",
        nightly(45),
        Policy(keep_daily=2, keep_weekly=2, keep_monthly=2),
        {"2026-02-14", "2026-02-13", "2026-02-08", "2026-01-31"},
    ),
    (
        "hourly 5 of 48 hours",
        hourly(48),
        Policy(keep_hourly=5),
        {"03-02T23", "03-02T22", "03-02T21", "03-02T20", "03-02T19"},
    ),
    (
        "within 3d of the newest backup",
        nightly(30),
        Policy(keep_within=timedelta(days=3)),
        {"2026-01-30", "2026-01-29", "2026-01-28", "2026-01-27"},
    ),
    (
        "more rules than backups keeps all",
        nightly(3),
        Policy(keep_last=10, keep_daily=10),
        {"2026-01-01", "2026-01-02", "2026-01-03"},
    ),
    ("empty history", [], Policy(keep_last=1), set()),
]


@pytest.mark.parametrize("title, backups, policy, expected", CASES, ids=[c[0] for c in CASES])
def test_keep_sets(title: str, backups: list[Dated], policy: Policy, expected: set[str]) -> None:
    decision = apply_policy(backups, policy)
    assert set(decision.keep) == expected
    assert set(decision.remove) == {b.name for b in backups} - expected


def test_reasons_explain_each_keep() -> None:
    decision = apply_policy(nightly(40), Policy(keep_last=1, keep_daily=2, keep_monthly=2))
    assert decision.keep["2026-02-09"] == ["last 1", "daily 2026-02-09", "monthly 2026-02"]
    assert decision.keep["2026-02-08"] == ["daily 2026-02-08"]
    assert decision.keep["2026-01-31"] == ["monthly 2026-01"]


def test_several_backups_a_day_keep_the_newest_of_the_day() -> None:
    t = datetime(2026, 5, 5, tzinfo=UTC)
    backups = [Dated(f"b{h}", t + timedelta(hours=h)) for h in (1, 9, 17, 23)]
    assert set(apply_policy(backups, Policy(keep_daily=1)).keep) == {"b23"}


def test_a_backup_dated_in_the_future_is_kept_aside_from_the_rules() -> None:
    """As the newest backup, one dated 2099 anchored keep-within there and took keep-last's
    slot: `forget --keep-within 7d` removed every real backup."""
    now = datetime(2026, 2, 10, 3, tzinfo=UTC)
    forged = Dated("forged", datetime(2099, 1, 1, tzinfo=UTC))
    backups = [*nightly(40), forged]
    policy = Policy(keep_last=2, keep_within=timedelta(days=7))
    assert set(apply_policy(backups, policy).keep) == {"forged", "2026-02-09"}
    decision = apply_policy(backups, policy, now=now)
    assert set(decision.keep) == {"forged"} | {f"2026-02-{d:02d}" for d in range(2, 10)}
    assert decision.keep["forged"] == ["dated in the future (2099-01-01 00:00 UTC)"]
    assert decision.keep["2026-02-09"][0] == "last 1"
    assert decision.order[0] == "forged" and decision.future == [forged]
    (warning,) = decision.warnings()
    assert "backup forged is dated 2099-01-01 00:00 UTC" in warning
    assert "`casbackup delete forged`" in warning


def on(host: str, backups: list[Dated]) -> list[Dated]:
    return [Dated(f"{host}-{b.name}", b.time, host) for b in backups]


def test_each_hosts_backups_are_kept_by_their_own_rules() -> None:
    """Two hosts sharing a repository, each running keep-daily 7 nightly: one policy over
    both removed the backup the other host had made that day, every day."""
    a = on("a", nightly(20))
    b = on("b", nightly(20, start=datetime(2026, 1, 1, 3, 40, tzinfo=UTC)))
    policy = Policy(keep_daily=7)
    per_host = apply_policy([*a, *b], policy)
    days = {f"2026-01-{d:02d}" for d in range(14, 21)}
    assert set(per_host.keep) == {f"{h}-{d}" for h in "ab" for d in days}
    assert per_host.order[:2] == ["b-2026-01-20", "a-2026-01-20"]
    assert per_host.remove == [n for n in per_host.order if n not in per_host.keep]
    assert per_host.hosts["a-2026-01-20"] == "a"
    across = apply_policy([*a, *b], replace(policy, per_host=False))
    assert set(across.keep) == {f"b-{d}" for d in days}
    assert policy.describe() == "keep-daily 7, per host"


def test_a_new_hosts_backups_do_not_expire_the_lost_hosts() -> None:
    """A replacement host whose nightly run started before its restore (a drill): with
    keep-last 3, three of its near-empty backups expired every backup of the lost host."""
    lost = on("db1", nightly(10))
    new = on("db1-new", nightly(3, start=datetime(2026, 1, 11, 2, 15, tzinfo=UTC)))
    decision = apply_policy([*lost, *new], Policy(keep_last=3))
    assert {n for n in decision.keep if n.startswith("db1-2026")} == {
        "db1-2026-01-10",
        "db1-2026-01-09",
        "db1-2026-01-08",
    }
    assert len(decision.keep) == 6


def test_backups_kept_per_host_are_listed_newest_first_as_every_decision_lists_them() -> None:
    """Decision.keep is newest first (forget --json's "keep", run's), as remove and order
    are; per host it came out one host's backups after the other's."""
    a = on("a", nightly(3))
    b = on("b", nightly(3, start=datetime(2026, 1, 1, 3, 40, tzinfo=UTC)))
    decision = apply_policy([*a, *b], Policy(keep_last=2))
    assert list(decision.keep) == [n for n in decision.order if n in decision.keep]
    assert list(decision.keep) == ["b-2026-01-03", "a-2026-01-03", "b-2026-01-02", "a-2026-01-02"]


def test_a_host_that_stopped_backing_up_is_named() -> None:
    """Per host, a gone host's backups (or those of a container named anew each run, one
    host per backup) are kept by their own rules for good: forget says so."""
    live = on("db2", nightly(30))
    gone = on("db1", nightly(10))
    now = datetime(2026, 1, 30, 3, tzinfo=UTC)
    decision = apply_policy([*live, *gone], Policy(keep_last=3), now=now)
    assert decision.idle_hosts == [("db1", 10, datetime(2026, 1, 10, 2, 15, tzinfo=UTC))]
    (line,) = decision.notes()
    assert line.startswith("1 host made no backup in 7 days, and their own rules keep theirs: ")
    assert "db1 (10 backups, newest 2026-01-10)" in line and "--across-hosts" in line
    assert not apply_policy(live, Policy(keep_last=3), now=now).notes()
    assert not apply_policy([*live, *gone], Policy(keep_last=3)).notes()  # no clock, no claim


def test_a_clock_a_few_hours_ahead_is_not_the_future() -> None:
    now = datetime(2026, 2, 9, 0, tzinfo=UTC)
    decision = apply_policy(nightly(40), Policy(keep_last=1), now=now)
    assert set(decision.keep) == {"2026-02-09"} and not decision.warnings()


def test_empty_policy_is_refused() -> None:
    with pytest.raises(UsageError, match="refusing"):
        apply_policy(nightly(3), Policy())


def test_negative_is_refused() -> None:
    with pytest.raises(UsageError):
        Policy(keep_last=-1)


@given(
    st.lists(
        st.datetimes(
            min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
        ),
        max_size=60,
        unique=True,
    ),
    st.integers(0, 5),
    st.integers(0, 5),
    st.integers(0, 5),
    st.integers(0, 3),
)
def test_properties(
    times: list[datetime], last: int, daily: int, weekly: int, monthly: int
) -> None:
    policy = Policy(keep_last=last, keep_daily=daily, keep_weekly=weekly, keep_monthly=monthly or 1)
    backups = [Dated(f"b{i}", t) for i, t in enumerate(times)]
    decision = apply_policy(backups, policy)
    assert set(decision.keep) | set(decision.remove) == {b.name for b in backups}
    assert not set(decision.keep) & set(decision.remove)
    if backups:
        newest = max(backups, key=lambda b: (b.time, b.name))
        assert newest.name in decision.keep  # every rule keeps the newest backup
    assert len(decision.keep) <= last + daily + weekly + (monthly or 1)


@pytest.mark.parametrize(
    "text, seconds",
    [("90s", 90), ("15m", 900), ("1h30m", 5400), ("7d", 604800), ("2w", 1209600), ("1y", 31536000)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds
    assert parse_duration(format_duration(parse_duration(text))) == parse_duration(text)


# The long ones were exit 70 (OverflowError in timedelta, ValueError of int()) from the
# config ([gc] min_age, lease_ttl, [retention] keep_within) and the command line.
@pytest.mark.parametrize(
    "text", ["", "7", "d", "3x", "1h-2m", "99999999999999999999d", "101y", "1" * 5000 + "s"]
)
def test_invalid_durations(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text)
