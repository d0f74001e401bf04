"""Commands that keep a repository bounded: delete, forget, gc, locks, unlock, run.

``casbackup.gc`` and ``casbackup.nightly`` are imported when a command
needs them, not with the command line (see ``cli/main.py``).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated

import typer

from casbackup.cli.backups import (
    JsonOption,
    _BackupBar,
    _print_report,
    _report_document,
    backup_options,
    nonempty_name,
)
from casbackup.cli.context import AppContext
from casbackup.cli.output import ByteProgress, emit_json, human_bytes, note, print_table, warn
from casbackup.cli.verifying import raise_if_failed, report_document
from casbackup.config import duration_seconds
from casbackup.errors import ExitCode, UsageError
from casbackup.lifecycle import delete_backups, forget
from casbackup.repo.locks import Lock, read_locks
from casbackup.retention import Decision, Policy, parse_duration

if TYPE_CHECKING:
    from casbackup.gc import GcReport


def delete(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(help="Backups to delete.")],
    json_output: JsonOption = False,
) -> None:
    """Delete backups (their manifests); `gc` frees the space. Never breaks another backup."""
    app: AppContext = ctx.obj
    # Not synced first: deletion goes by name, and the sync would warn about
    # the damaged backup being deleted (the advice for one is `delete`).
    deleted = delete_backups(app.repository, app.catalog, [nonempty_name(n) for n in names])
    if json_output:
        emit_json({"deleted": deleted})
    else:
        for name in deleted:
            print(f"deleted backup {name}")


def _decision_rows(decision: Decision) -> list[list[str]]:
    """Newest first, by time: names need not sort as times do (`create before-upgrade`)."""
    return [
        [name, decision.hosts.get(name, ""), "keep", "; ".join(decision.keep[name])]
        if name in decision.keep
        else [name, decision.hosts.get(name, ""), "remove", ""]
        for name in decision.order
    ]


def forget_command(
    ctx: typer.Context,
    keep_last: Annotated[int | None, typer.Option("--keep-last", help="Keep the N newest.")] = None,
    keep_hourly: Annotated[int | None, typer.Option("--keep-hourly")] = None,
    keep_daily: Annotated[int | None, typer.Option("--keep-daily")] = None,
    keep_weekly: Annotated[int | None, typer.Option("--keep-weekly")] = None,
    keep_monthly: Annotated[int | None, typer.Option("--keep-monthly")] = None,
    keep_yearly: Annotated[int | None, typer.Option("--keep-yearly")] = None,
    keep_within: Annotated[
        str | None,
        typer.Option(
            "--keep-within", help="Keep everything this close to the newest backup (7d, 2w)."
        ),
    ] = None,
    per_host: Annotated[
        bool | None,
        typer.Option(
            "--per-host/--across-hosts",
            help="Apply the rules to each host's backups apart (default: [retention] per_host, "
            "true), or to every backup as one set.",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only show what would be removed.")
    ] = False,
    json_output: JsonOption = False,
) -> int:
    """Apply a retention policy: options, or [retention] in the config when none are given."""
    app: AppContext = ctx.obj
    given = {
        "keep_last": keep_last,
        "keep_hourly": keep_hourly,
        "keep_daily": keep_daily,
        "keep_weekly": keep_weekly,
        "keep_monthly": keep_monthly,
        "keep_yearly": keep_yearly,
    }
    if any(v is not None for v in given.values()) or keep_within:
        policy = Policy(
            **{k: v or 0 for k, v in given.items()},
            keep_within=parse_duration(keep_within) if keep_within else None,
            per_host=app.settings.retention.per_host,
        )
    else:
        policy = app.settings.retention.policy()
    if per_host is not None:
        policy = replace(policy, per_host=per_host)
    decision = forget(app.repository, app.synced_catalog(), policy, dry_run=dry_run)
    if json_output:
        emit_json(
            {
                "policy": policy.describe(),
                "dry_run": dry_run,
                "keep": decision.keep,
                "remove": decision.remove,
                "warnings": decision.warnings(),
            }
        )
    else:
        print(f"policy: {policy.describe()}")
        print_table(["backup", "host", "action", "kept because"], _decision_rows(decision))
        verb = "would remove" if dry_run else "removed"
        print(
            f"{verb} {len(decision.remove)} of {len(decision.keep) + len(decision.remove)} backups"
        )
    for line in decision.notes():
        note(line)
    for warning in decision.warnings():  # on stderr, beside --json too
        warn(warning)
    return ExitCode.WARNING if decision.future else ExitCode.OK


def _gc_document(report: GcReport, dry_run: bool) -> dict[str, object]:
    plan = report.plan
    return {
        "dry_run": dry_run,
        "plan": {
            "delete": [{"pack": a.name, "bytes": a.size} for a in plan.delete],
            "resurrect": [a.name for a in plan.resurrect],
            "condemn": [{"pack": a.name, "bytes": a.size} for a in plan.condemn],
            "repack": [
                {"pack": a.name, "bytes": a.size, "live_bytes": a.live_bytes} for a in plan.repack
            ],
            "waiting_marks": [
                {"mark": m.id, "packs": len(m.packs), "reason": why}
                for m, why in plan.waiting_marks
            ],
            "bytes_to_free": plan.bytes_to_free,
            "bytes_to_condemn": plan.bytes_to_condemn,
            "too_young": [{"pack": a.name, "bytes": a.size} for a in plan.too_young],
        },
        "packs_deleted": report.packs_deleted,
        "bytes_freed": report.bytes_freed,
        "chunks_freed": report.chunks_freed,
        "packs_resurrected": report.packs_resurrected,
        "packs_condemned": report.packs_condemned,
        "packs_repacked": report.packs_repacked,
        "repack_bytes_written": report.repack_bytes_written,
        "warnings": report.warnings,
    }


def _print_gc(report: GcReport, dry_run: bool) -> None:
    plan = report.plan
    if dry_run:
        print(
            f"would delete {len(plan.delete)} packs ({human_bytes(plan.bytes_to_free)}), resurrect "
            f"{len(plan.resurrect)}, condemn {len(plan.condemn)} and repack {len(plan.repack)} "
            f"({human_bytes(plan.bytes_to_condemn)} to be freed by a later gc)"
        )
    else:
        print(
            f"deleted {report.packs_deleted} packs, freed {human_bytes(report.bytes_freed)} "
            f"({report.chunks_freed} chunks); resurrected {report.packs_resurrected}; condemned "
            f"{report.packs_condemned} packs ({human_bytes(plan.bytes_to_condemn)} to be freed by a later "
            f"gc); repacked {report.packs_repacked} (wrote {human_bytes(report.repack_bytes_written)})"
        )
    for mark, why in plan.waiting_marks:
        note(f"mark {mark.id} ({len(mark.packs)} packs) waits: {why}")
    if plan.too_young:
        young = plan.too_young
        note(
            f"{len(young)} pack{'s' if len(young) > 1 else ''} "
            f"({human_bytes(sum(a.size - a.live_bytes for a in young))} no backup needs) "
            f"{'are' if len(young) > 1 else 'is'} younger than min age ({plan.min_age:.0f} s), "
            "left for a later gc (--min-age 0s in drills)"
        )
    for warning in report.warnings:
        warn(warning)


def gc(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the exact plan; change nothing.")
    ] = False,
    min_age: Annotated[
        str | None, typer.Option("--min-age", help="Override [gc] min_age (e.g. 0s in drills).")
    ] = None,
    repack_below: Annotated[float | None, typer.Option("--repack-below", min=0.0, max=1.0)] = None,
    json_output: JsonOption = False,
) -> int:
    """Free packs no backup references (two runs: condemn, then delete)."""
    from casbackup.gc import collect_garbage
    from casbackup.nightly import gc_settings

    app: AppContext = ctx.obj
    settings = gc_settings(app.settings, app.settings.repository.pack_size_mb * 1024 * 1024)
    if min_age is not None:
        settings = replace(settings, min_age=duration_seconds_cli(min_age))
    if repack_below is not None:
        settings = replace(settings, repack_below=repack_below)
    with Lock(app.repository.store, "gc", exclusive=True, command="gc") as lock:
        report = collect_garbage(
            app.repository,
            app.catalog,
            settings,
            run_id=lock.id,
            dry_run=dry_run,
        )
    if json_output:
        emit_json(_gc_document(report, dry_run))
    else:
        _print_gc(report, dry_run)
    return ExitCode.WARNING if report.warnings else ExitCode.OK


def duration_seconds_cli(text: str) -> float:
    try:
        return duration_seconds(text)
    except ValueError as exc:
        raise UsageError(detail=str(exc)) from None


def locks(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Show locks and leases: who holds them, since when, and whether they are stale."""
    app: AppContext = ctx.obj
    ttl = duration_seconds(app.settings.gc.lease_ttl)
    now = time.time()
    records = read_locks(app.repository.store)
    if json_output:
        emit_json(
            [
                {
                    "key": r.key,
                    "kind": r.kind,
                    "exclusive": r.exclusive,
                    "host": r.host,
                    "pid": r.pid,
                    "command": r.command,
                    "created_at": r.created_at,
                    "heartbeat_age_s": _age(now, r.heartbeat_at),
                    "stale": r.stale(now, ttl),
                }
                for r in records
            ]
        )
        return
    if not records:
        print("no locks")
        return
    print_table(
        ["lock", "held by", "age", "last heartbeat", "stale"],
        [
            [
                r.key,
                f"{r.command} (pid {r.pid} on {r.host})",
                _shown_age(now, r.created_at, "s"),
                _shown_age(now, r.heartbeat_at, "s ago"),
                "yes" if r.stale(now, ttl) else "no",
            ]
            for r in records
        ],
    )


def _age(now: float, at: float) -> float | None:
    """Seconds since ``at``; None for an unreadable lock, which records no time (0.0, 1970)."""
    return round(now - at, 1) if at else None


def _shown_age(now: float, at: float, unit: str) -> str:
    age = _age(now, at)
    return "?" if age is None else f"{age:.0f} {unit}"


def unlock(
    ctx: typer.Context,
    keys: Annotated[
        list[str] | None, typer.Argument(help="Lock keys to remove (see `locks`).")
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Remove every lock, live or not (dangerous).")
    ] = False,
) -> int:
    """Remove stale locks (default), the given ones, or all of them."""
    app: AppContext = ctx.obj
    store = app.repository.store
    ttl = duration_seconds(app.settings.gc.lease_ttl)
    now = time.time()
    records = read_locks(store)
    if keys:
        unknown = set(keys) - {r.key for r in records}
        if unknown:
            raise UsageError(detail=f"no such lock: {', '.join(sorted(unknown))}")
        chosen = [r for r in records if r.key in keys]
    elif all_:
        chosen = records
    else:
        chosen = [r for r in records if r.stale(now, ttl)]
    for record in chosen:
        store.delete(record.key)
        print(
            f"removed {record.key} ({record.describe()}{', stale' if record.stale(now, ttl) else ', LIVE'})"
        )
    if not chosen:
        print("nothing to remove")
    live = [r for r in records if r not in chosen and not r.stale(now, ttl)]
    if live and not keys:
        # Else "nothing to remove" beside a lock `locks` lists reads as a failure to remove it.
        print(
            f"kept {len(live)} live lock{'s' if len(live) > 1 else ''} "
            f"({', '.join(r.key for r in live[:3])}{', …' if len(live) > 3 else ''}): their "
            "process runs, or ran within the lease's time to live; `unlock KEY` or `--all` "
            "removes them"
        )
    return ExitCode.OK


def run(
    ctx: typer.Context,
    json_output: JsonOption = False,
) -> int:
    """The nightly job: create, forget (configured policy), gc, verify ([verify]); under a lock."""
    from casbackup.nightly import run_nightly

    app: AppContext = ctx.obj
    settings = app.settings
    options = backup_options(settings)
    bar = ByteProgress(enabled=not (json_output or app.quiet))
    with bar.running("backing up"):
        report = run_nightly(
            app.server, app.repository, app.catalog, settings, options, _BackupBar(bar)
        )
    if json_output:
        emit_json(
            {
                "backup": _report_document(report.backup),
                "forget": None
                if report.forget is None
                else {"keep": report.forget.keep, "remove": report.forget.remove},
                "gc": None if report.gc is None else _gc_document(report.gc, False),
                "verify": None if report.verify is None else report_document(report.verify),
                "warnings": report.warnings,
            }
        )
    else:
        _print_report(report.backup, app.quiet)
        if report.forget is not None:
            print(
                f"forget: removed {len(report.forget.remove)} backups, kept {len(report.forget.keep)}"
            )
            for line in report.forget.notes():
                note(line)
            for warning in report.forget.warnings():  # they count in run's exit 1
                warn(warning)
        if report.gc is not None:
            _print_gc(report.gc, False)
        if report.verify is not None:
            verdict = "OK" if report.verify.ok else f"{len(report.verify.problems)} problems"
            # With [verify] restore, the log must show the drill ran, not only the read.
            drill = (
                f", {len(report.verify.tables)} tables test-restored"
                if report.verify.tables
                else ""
            )
            print(
                f"verify: {verdict} ({report.verify.packs_read} packs read, {report.verify.subset or 'structure'}{drill})"
            )
            for problem in report.verify.problems:
                note(f"problem: {problem}")
    if not app.quiet:  # a nightly `--quiet run` logs no notes, only results and warnings
        for line in report.backup.notes:
            note(line)
    if report.verify is not None:
        raise_if_failed(report.verify)
    return ExitCode.WARNING if report.warnings else ExitCode.OK


def register(app: typer.Typer) -> None:
    app.command()(delete)
    app.command(name="forget")(forget_command)
    app.command()(gc)
    app.command()(locks)
    app.command()(unlock)
    app.command()(run)
