"""`casbackup run`: the nightly job in one command, under a repository lock.

create, then forget with the configured retention policy (if any), then gc.
Two runs never overlap (an exclusive ``run`` lock); a manual ``create`` may
run alongside, protected like any backup by its lease. Each step's result is
reported; a failing step stops the job with that step's error and exit code,
and what earlier steps committed stays committed: the error then says so
(the backup committed, the backups forget removed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from casbackup.backup import BackupOptions, BackupProgress, BackupReport, BackupService
from casbackup.catalog import Catalog
from casbackup.clickhouse.server import ClickHouseServer
from casbackup.config import Settings, duration_seconds
from casbackup.gc import GcReport, GcSettings, collect_garbage
from casbackup.lifecycle import forget
from casbackup.repo.locks import Lock
from casbackup.repo.repository import Repository
from casbackup.retention import Decision
from casbackup.verify import Verifier, VerifyOptions, VerifyReport


@dataclass
class NightlyReport:
    backup: BackupReport
    forget: Decision | None = None
    gc: GcReport | None = None
    verify: VerifyReport | None = None
    warnings: list[str] = field(default_factory=list)
    step: str = "create"  # the step running, or the last one run


def gc_settings(settings: Settings, pack_size: int) -> GcSettings:
    return GcSettings(
        min_age=duration_seconds(settings.gc.min_age),
        repack_below=settings.gc.repack_below,
        lease_ttl=duration_seconds(settings.gc.lease_ttl),
        pack_size=pack_size,
    )


def run_nightly(
    server: ClickHouseServer,
    repo: Repository,
    catalog: Catalog,
    settings: Settings,
    options: BackupOptions,
    progress: BackupProgress | None = None,
) -> NightlyReport:
    with Lock(repo.store, "run", exclusive=True, command="run"):
        report = NightlyReport(backup=BackupService(server, repo, catalog, options, progress).run())
        report.warnings += report.backup.warnings
        try:
            _after_backup(server, repo, catalog, settings, options, report)
        except BaseException as exc:
            # The step's own error and exit code stand; the log must still say
            # that the night's backup was committed and what forget removed.
            exc.add_note(done_before_failing(report))
            raise
    return report


def _after_backup(
    server: ClickHouseServer,
    repo: Repository,
    catalog: Catalog,
    settings: Settings,
    options: BackupOptions,
    report: NightlyReport,
) -> None:
    policy = settings.retention.policy()
    if not policy.empty:
        report.step = "forget"
        report.forget = forget(repo, catalog, policy)
        report.warnings += report.forget.warnings()
    report.step = "gc"
    with Lock(repo.store, "gc", exclusive=True, command="gc (run)") as lock:
        report.gc = collect_garbage(
            repo, catalog, gc_settings(settings, options.pack_size), run_id=lock.id
        )
    # gc's strict sync meets again the packs the backup's sync left out: each is
    # reported once, by the step that found it first (text and --json alike).
    report.gc.warnings = [w for w in report.gc.warnings if w not in report.warnings]
    report.warnings += report.gc.warnings
    report.step = "verify"
    report.verify = Verifier(
        repo,
        catalog,
        VerifyOptions(
            read_data=settings.verify.read_data_subset is not None,
            subset=settings.verify.read_data_subset,
            restore=settings.verify.restore,
            names=(report.backup.name,) if settings.verify.restore else (),
            index_gaps=False,  # gc checked them under its lock a moment ago, or stopped the run
        ),
        server,
    ).run()


def done_before_failing(report: NightlyReport) -> str:
    """What a run that stopped after its backup had already committed, in one clause."""
    done = [f"run had committed backup {report.backup.name}"]
    if report.forget is not None:
        removed = report.forget.remove
        done.append(
            f"forget had removed {len(removed)} backup{'' if len(removed) == 1 else 's'}"
            + (f" ({', '.join(removed[:5])}{', …' if len(removed) > 5 else ''})" if removed else "")
        )
    return f"{' and '.join(done)} when it stopped in {report.step}"
