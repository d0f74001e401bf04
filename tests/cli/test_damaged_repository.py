"""One damaged object in the repository costs its own backup, never the others.

A manifest that does not decode, a pack whose trailer does not parse or a
stray object must not stop new backups, restores of the other backups,
`delete` or a catalog rebuild; gc, which must never free what a backup it
cannot read may reference, stops instead, with advice. The damage is made by
hand, as a failing disk or a careless operator would make it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from casbackup.errors import ExitCode
from casbackup.repo import manifest as codec
from tests.cli.test_failures import one_line_error
from tests.cli.test_incremental import create_table, fill
from tests.cli.test_older_releases import rewrite_manifest
from tests.clickhouse.schema import fingerprints, q
from tests.engines import Engine
from tests.helpers import small_backups, unwritable


def two_backups(engine: Engine, dbname: str, cli: Any) -> dict[str, Any]:
    """Backups b1 and b2 of the same table; returns its fingerprints."""
    create_table(engine, dbname)
    fill(engine, dbname, rows=20_000)
    assert cli(engine, "init").code == 0
    assert cli(engine, "create", "b1", "--tables", f"{dbname}.*").code == 0
    assert cli(engine, "create", "b2", "--tables", f"{dbname}.*").code == 0
    return fingerprints(engine, [dbname])


def restores_as_copy(
    engine: Engine, dbname: str, cli: Any, name: str, before: Any, code: int = ExitCode.OK
) -> None:
    copy = f"{dbname}_{name}"
    result = cli(engine, "restore", name, "--as", f"{dbname}:{copy}")
    assert result.code == code, result.stderr
    after = fingerprints(engine, [copy])
    assert {k.replace(copy, dbname, 1): v for k, v in after.items()} == before
    engine.sql(f"DROP DATABASE {q(copy)}")


def test_a_corrupt_manifest_costs_only_its_own_backup(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = tmp_path / "repo"
    before = two_backups(engine, dbname, cli)
    (repo / "manifests" / "b3").write_bytes(b"garbage, not a manifest")
    (repo / "manifests" / "bad=name").write_bytes(b"stray")

    # Each command that leaves the backup out says so, once, and exits 1 (it listed b1 and b2
    # with exit 0 before, and a script could not tell a repository with a lost backup).
    listed = cli(engine, "list", "--json")
    assert listed.code == ExitCode.WARNING, listed.stderr
    assert [b["name"] for b in listed.json()] == ["b1", "b2"]
    left_out = "casbackup: warning: backup b3 not indexed: manifest of backup b3 is corrupt"
    assert listed.stderr.count(left_out) == 1, listed.stderr
    # The log's warnings (pytest's log capture takes them from the in-process CLI).
    assert caplog.text.count("ignored 'manifests/bad=name': not a name casbackup gives") == 1

    created = cli(engine, "create", "b4", "--tables", f"{dbname}.*")
    assert created.code == ExitCode.WARNING, created.stderr
    assert created.stderr.count(left_out) == 1, created.stderr
    restores_as_copy(engine, dbname, cli, "b1", before, code=ExitCode.WARNING)

    gc = cli(engine, "gc", "--min-age", "0s")
    assert gc.code == ExitCode.INTEGRITY
    one_line_error(gc.stderr.splitlines()[-1] + "\n")
    assert "gc frees nothing while a backup in the store cannot be indexed" in gc.stderr
    assert "`casbackup delete` removes a backup that is lost" in gc.stderr

    deleted = cli(engine, "delete", "b3")
    assert deleted.code == 0 and "warning" not in deleted.stderr, deleted.stderr
    assert cli(engine, "list").code == 0
    assert cli(engine, "gc", "--min-age", "0s").code == 0
    assert cli(engine, "verify", "--read-data").code == 0
    restores_as_copy(engine, dbname, cli, "b4", before)


def test_verify_gives_a_corrupt_manifest_one_problem_with_the_advice_that_helps(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """verify also reported the backup as one 'the catalog does not know (run `casbackup
    catalog sync`)': no sync can index a manifest that does not decode."""
    two_backups(engine, dbname, cli)
    (tmp_path / "repo" / "manifests" / "b3").write_bytes(b"garbage, not a manifest")
    result = cli(engine, "verify")
    assert result.code == ExitCode.VERIFY_FAILED
    problems = [line for line in result.stderr.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 1, result.stderr
    assert problems[0].startswith(
        "problem: [structure] backup b3: manifest of backup b3 is corrupt"
    )
    assert "`casbackup delete b3` if the backup is lost" in problems[0]


def test_a_rebuild_indexes_everything_but_the_damage(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    before = two_backups(engine, dbname, cli)
    (repo / "manifests" / "b3").write_bytes(b"garbage, not a manifest")
    stray = repo / "packs" / "ab" / ("ab" * 32)
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"not a pack" * 100)
    (repo / "catalog.sqlite").unlink()

    rebuilt = cli(engine, "catalog", "rebuild", "--json")
    assert rebuilt.code == ExitCode.WARNING, rebuilt.stderr
    report = rebuilt.json()
    assert report["backups"] == 2
    assert [w.split(":")[0] for w in report["warnings"]] == [
        f"pack {'ab' * 32} not indexed",
        "backup b3 not indexed",
    ]
    restores_as_copy(engine, dbname, cli, "b2", before, code=ExitCode.WARNING)
    assert stray.exists()  # not casbackup's to delete: it may be someone's


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (
            "DELETE FROM chunks WHERE pack_id = (SELECT id FROM packs ORDER BY size DESC LIMIT 1)",
            "chunk references lead to no indexed pack",
        ),
        (
            "DELETE FROM file_chunks WHERE file_digest = "
            "(SELECT file_digest FROM part_files ORDER BY size DESC LIMIT 1)",
            "referenced files have no complete chunk list",
        ),
        (
            "DELETE FROM part_files WHERE id = (SELECT id FROM part_files ORDER BY size DESC LIMIT 1)",
            "hold fewer part file bytes than they recorded",
        ),
        (
            "DELETE FROM parts WHERE id = (SELECT min(id) FROM parts)",
            "hold fewer part file bytes than they recorded",
        ),
    ],
)
def test_gc_stops_when_the_catalog_lost_index_rows(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path, damage: str, said: str
) -> None:
    """Index rows lost (a damaged catalog): gc would see needed packs as free."""
    repo = tmp_path / "repo"
    before = two_backups(engine, dbname, cli)
    with sqlite3.connect(repo / "catalog.sqlite") as conn:
        conn.execute(damage)
    packs = sorted((repo / "packs").rglob("*"))

    for _ in range(2):  # condemn, then delete: neither may happen
        gc = cli(engine, "gc", "--min-age", "0s")
        assert gc.code == ExitCode.INTEGRITY
        assert "gc frees nothing while the catalog's index is incomplete" in gc.stderr
        assert said in gc.stderr
        assert "run `casbackup catalog rebuild`" in gc.stderr
    assert sorted((repo / "packs").rglob("*")) == packs
    assert not (repo / "condemned").exists() or not list((repo / "condemned").iterdir())

    assert cli(engine, "catalog", "rebuild").code == 0
    assert cli(engine, "gc", "--min-age", "0s").code == 0
    assert cli(engine, "gc", "--min-age", "0s").code == 0
    restores_as_copy(engine, dbname, cli, "b1", before)


def pack_files(repo: Path) -> list[Path]:
    return sorted(p for p in (repo / "packs").rglob("*") if p.is_file())


def test_a_manifest_claiming_more_logical_bytes_than_its_parts_stops_gc_only_until_rebuilt(
    cli: Any, tmp_path: Path
) -> None:
    """A manifest whose stats.logical_bytes exceeds its part files' sizes (no release writes
    one; re-encoded by hand) stopped every gc with "run `casbackup catalog rebuild`", and
    the rebuild read the same stat again: the nightly run failed for good. The parts are
    sound, so the backup stays whole; the catalog records the parts' sum."""
    repo = tmp_path / "repo"
    assert cli(None, "init").code == 0
    small_backups(repo, tmp_path, ["b1", "b2"])
    true_size = {b["name"]: b["logical_bytes"] for b in cli(None, "list", "--json").json()}

    def inflated(doc: dict[str, Any]) -> None:
        doc["stats"]["logical_bytes"] += 1

    rewrite_manifest(repo, "b2", inflated)
    assert cli(None, "catalog", "sync").code == 0  # imports the manifest as it is now
    # ... and records the stat, as releases before the parts' sum did.
    with sqlite3.connect(repo / "catalog.sqlite") as conn:
        conn.execute("UPDATE backups SET logical_bytes = logical_bytes + 1 WHERE name = 'b2'")
    assert cli(None, "delete", "b1").code == 0
    packs = pack_files(repo)

    gc = cli(None, "gc", "--min-age", "0s")
    assert gc.code == ExitCode.INTEGRITY
    assert "1 backups hold fewer part file bytes than they recorded, e.g. b2" in gc.stderr
    assert "run `casbackup catalog rebuild`" in gc.stderr
    assert pack_files(repo) == packs

    # The advice helps: the rebuild records the parts' sum, and gc runs.
    assert cli(None, "catalog", "rebuild").code == 0
    assert {b["name"]: b["logical_bytes"] for b in cli(None, "list", "--json").json()} == {
        "b2": true_size["b2"]
    }
    for _ in range(2):  # condemn b1's pack, then delete it; b2's stays
        assert cli(None, "gc", "--min-age", "0s").code == 0
    assert len(pack_files(repo)) == len(packs) - 1
    assert cli(None, "verify", "--read-data").code == 0


def test_a_manifest_claiming_fewer_logical_bytes_hides_no_lost_catalog_rows(
    cli: Any, tmp_path: Path
) -> None:
    """gc's check of each backup's part file rows compared them with the manifest's stat:
    one of 0 (re-encoded by hand) let a catalog that lost all the backup's part file rows
    through, and gc condemned, then deleted, the only pack of a readable backup."""
    repo = tmp_path / "repo"
    assert cli(None, "init").code == 0
    small_backups(repo, tmp_path, ["b1", "b2"])

    def deflated(doc: dict[str, Any]) -> None:
        doc["stats"]["logical_bytes"] = 0

    rewrite_manifest(repo, "b2", deflated)
    assert cli(None, "catalog", "sync").code == 0  # imports the manifest as it is now
    with sqlite3.connect(repo / "catalog.sqlite") as conn:
        conn.execute(
            "DELETE FROM part_files WHERE part_id IN (SELECT p.id FROM parts p "
            "JOIN backup_tables bt ON bt.id = p.table_id "
            "JOIN backups b ON b.id = bt.backup_id WHERE b.name = 'b2')"
        )
    packs = pack_files(repo)

    for _ in range(2):
        gc = cli(None, "gc", "--min-age", "0s")
        assert gc.code == ExitCode.INTEGRITY, gc.stdout
        assert "1 backups hold fewer part file bytes than they recorded, e.g. b2" in gc.stderr
    assert pack_files(repo) == packs

    assert cli(None, "catalog", "rebuild").code == 0
    for _ in range(2):
        assert cli(None, "gc", "--min-age", "0s").code == 0
    assert pack_files(repo) == packs
    assert cli(None, "verify", "--read-data").code == 0


def test_verify_reports_the_lost_catalog_rows_gc_refuses_to_run_over(
    cli: Any, tmp_path: Path
) -> None:
    """gc stopped on a backup whose part file rows were lost and advised a rebuild, while
    `verify` said "verify OK": the check an operator reaches for contradicted gc."""
    repo = tmp_path / "repo"
    assert cli(None, "init").code == 0
    small_backups(repo, tmp_path, ["b1", "b2"])
    with sqlite3.connect(repo / "catalog.sqlite") as conn:
        conn.execute(
            "DELETE FROM part_files WHERE part_id IN (SELECT p.id FROM parts p "
            "JOIN backup_tables bt ON bt.id = p.table_id "
            "JOIN backups b ON b.id = bt.backup_id WHERE b.name = 'b2')"
        )
    assert cli(None, "gc", "--min-age", "0s").code == ExitCode.INTEGRITY
    verified = cli(None, "verify")
    assert verified.code == ExitCode.VERIFY_FAILED, verified.stdout
    (problem,) = [line for line in verified.stderr.splitlines() if line.startswith("problem: ")]
    assert "[catalog] the catalog's references: 1 backups hold fewer part file bytes" in problem
    assert "`casbackup catalog rebuild`" in problem

    assert cli(None, "catalog", "rebuild").code == 0
    assert cli(None, "verify").code == 0


def test_a_catalog_missing_a_table_is_a_one_line_catalog_error_until_rebuilt(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """`DROP TABLE chunks` made create, restore and gc end as exit 70 with a dump of SQL."""
    repo = tmp_path / "repo"
    before = two_backups(engine, dbname, cli)
    with sqlite3.connect(repo / "catalog.sqlite") as conn:
        conn.execute("DROP TABLE chunks")
    for command in (
        ["create", "b3", "--tables", f"{dbname}.*"],
        ["restore", "b1", "--as", f"{dbname}:{dbname}_b1"],
        ["gc", "--min-age", "0s"],
    ):
        result = cli(engine, *command)
        assert result.code == ExitCode.CATALOG, (command, result.stderr)
        one_line_error(result.stderr)
        assert "no such table: chunks" in result.stderr
        assert "casbackup catalog rebuild" in result.stderr
    assert engine.shadow_dirs() == []

    assert cli(engine, "catalog", "rebuild").code == 0
    restores_as_copy(engine, dbname, cli, "b1", before)


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE packs SET digest = 'xyz' || id",
        "UPDATE packs SET created_at = 'garbage', size = 'big'",
        'UPDATE chunks SET "offset" = -5',
        "UPDATE chunks SET \"offset\" = 'abc'",
        # Read as a range far past the pack's end: "pack ... is corrupt" blamed a sound pack.
        "UPDATE chunks SET length = 9223372036854775807",
        "UPDATE file_chunks SET chunk_digest = 'qq'",
        "UPDATE backups SET started_at = 'garbage'",
        "UPDATE backups SET logical_bytes = 'x'",
    ],
)
def test_a_catalog_row_no_casbackup_writes_is_a_one_line_catalog_error(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path, damage: str
) -> None:
    """Values the schema's checks keep out, put in by hand: each ended some command as exit 70
    (a ValueError or TypeError turning the row into a digest, a time or a size)."""
    two_backups(engine, dbname, cli)
    with sqlite3.connect(tmp_path / "repo" / "catalog.sqlite") as conn:
        conn.execute("PRAGMA ignore_check_constraints = ON")
        conn.execute(damage)
    for command in (
        ["list"],
        ["verify", "--read-data"],
        ["restore", "b1", "--as", f"{dbname}:{dbname}_b1"],
        ["gc", "--dry-run"],
        ["catalog", "sync"],
    ):
        result = cli(engine, *command)
        assert result.code != ExitCode.INTERNAL, (command, result.stderr)
        assert "Traceback" not in result.stderr, (command, result.stderr)
        if command[0] == "restore":  # the packs are sound: only the catalog may be blamed
            assert "corrupt" not in result.stderr, result.stderr
        if result.code == ExitCode.CATALOG:
            one_line_error(result.stderr)
            assert "casbackup catalog rebuild" in result.stderr, (command, result.stderr)
    assert cli(engine, "catalog", "rebuild").code == 0
    assert cli(engine, "verify", "--read-data").code == 0


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_catalog_file_that_is_no_database_is_one_line(
    cli: Any, tmp_path: Path, damage: str
) -> None:
    repo = tmp_path / "repo"
    assert cli(None, "init").code == 0
    catalog = repo / "catalog.sqlite"
    with sqlite3.connect(catalog) as conn:  # fold the WAL into the file
        conn.execute("PRAGMA journal_mode = DELETE")
    data = catalog.read_bytes()
    catalog.write_bytes(data[:1000] if damage == "truncated" else b"not a database" * 100)
    result = cli(None, "list")
    assert result.code == ExitCode.CATALOG
    one_line_error(result.stderr)
    assert "sqlalche.me" not in result.stderr and "casbackup catalog rebuild" in result.stderr
    assert cli(None, "catalog", "rebuild").code == 0
    assert cli(None, "list").code == 0


def test_a_repository_that_cannot_be_written_is_not_called_a_damaged_catalog(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local repository on a read-only mount (a snapshot, a copy): SQLite cannot open its
    catalog there. The advice was "if the catalog is damaged, rebuild it", which cannot work
    in place; a catalog elsewhere does (docs/operations.md, "Losing the host")."""
    repo = tmp_path / "repo"
    assert cli(None, "init").code == 0
    assert cli(None, "list").code == 0
    with unwritable(repo):
        result = cli(None, "list")
        assert result.code == ExitCode.CATALOG
        one_line_error(result.stderr)
        assert f"{repo} cannot be written" in result.stderr, result.stderr
        assert "CASBACKUP_CATALOG" in result.stderr
        assert "if the catalog is damaged" not in result.stderr
        monkeypatch.setenv("CASBACKUP_CATALOG", f"sqlite:///{tmp_path / 'elsewhere.sqlite'}")
        assert cli(None, "catalog", "rebuild").code == 0
        assert cli(None, "list").code == 0


@pytest.mark.parametrize("statement", ["DROP DATABASE {db}", "CREATE TABLE", "CREATE DATABASE x"])
def test_a_recorded_statement_that_is_no_create_is_damage_found_before_any_change(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path, statement: str
) -> None:
    """Statements in a manifest are untrusted: exit 15, and no database made for the restore."""
    repo = tmp_path / "repo"
    two_backups(engine, dbname, cli)
    manifest = codec.decode((repo / "manifests" / "b1").read_bytes(), "b1")
    table = manifest.tables[0].model_copy(update={"create_sql": statement.format(db=q(dbname))})
    forged = manifest.model_copy(update={"name": "b9", "tables": [table]})
    (repo / "manifests" / "b9").write_bytes(codec.encode(forged))

    restored = cli(engine, "restore", "b9", "--as", f"{dbname}:{dbname}_copy")
    assert restored.code == ExitCode.INTEGRITY
    one_line_error(restored.stderr)
    assert f"manifest of backup b9 is corrupt: {dbname}.events" in restored.stderr
    assert not engine.value(f"SELECT count() FROM system.databases WHERE name = '{dbname}_copy'")
    assert engine.value(f"SELECT count() FROM {q(dbname)}.events") == 20_000


def test_restore_drop_existing_of_a_backup_missing_a_pack_drops_nothing(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """--drop-existing drops first and fetches after: a backup whose pack is gone left the
    live table it was to replace empty, and only then failed."""
    two_backups(engine, dbname, cli)
    live = fingerprints(engine, [dbname])
    biggest = max((tmp_path / "repo" / "packs").rglob("*"), key=lambda p: p.stat().st_size)
    biggest.unlink()
    result = cli(engine, "restore", "b1", "--drop-existing")
    assert result.code == ExitCode.INTEGRITY, result.stderr
    one_line_error(result.stderr)
    assert "packs the restored tables need are missing from the store" in result.stderr
    assert "nothing was dropped" in result.stderr
    assert fingerprints(engine, [dbname]) == live


def test_a_pack_still_missing_after_restore_synced_is_called_lost(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """A restore that meets a missing pack syncs the catalog once and tries again (another
    host's gc may have moved the chunks). When the pack is still missing, the error gave
    PackMissing's advice, `casbackup catalog sync`, which the restore had just followed."""
    two_backups(engine, dbname, cli)
    biggest = max((tmp_path / "repo" / "packs").rglob("*"), key=lambda p: p.stat().st_size)
    biggest.unlink()
    result = cli(engine, "restore", "b1", "--as", f"{dbname}:{dbname}_copy")
    assert result.code == ExitCode.INTEGRITY, result.stderr
    one_line_error(result.stderr)
    assert f"pack {biggest.name} is referenced but missing" in result.stderr
    assert "also after this run synced the catalog" in result.stderr
    assert "catalog sync` finds the copy" not in result.stderr
