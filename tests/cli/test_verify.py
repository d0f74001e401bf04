"""verify: each kind of damage is reported exactly, at the level that can see it."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from casbackup.catalog import Catalog
from casbackup.clickhouse.server import SCRATCH_PREFIX
from casbackup.clickhouse.sql import qualified
from casbackup.errors import CasbackupError, ClickHouseError, ExitCode
from casbackup.repo import manifest as mf
from casbackup.repo.keys import manifest_key
from casbackup.repo.repository import Repository
from casbackup.store.local import LocalStore
from casbackup.verify import Verifier, choose_subset
from tests.cli.test_incremental import create_table, fill, mutate
from tests.engines import Engine
from tests.helpers import StagedParts, after_staging, flip_byte, snapshot_directory, write_tree


def backed_up(engine: Engine, dbname: str, cli: Any, name: str = "b1", rows: int = 300_000) -> None:
    create_table(engine, dbname)
    fill(engine, dbname, rows=rows)
    engine.sql(f"CREATE VIEW `{dbname}`.v AS SELECT id FROM `{dbname}`.events WHERE id < 10")
    if cli(engine, "init").code not in (0, ExitCode.CONFLICT):
        raise AssertionError("init failed")
    assert cli(engine, "create", name, "--tables", f"{dbname}.*").code == 0


def set_fingerprints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """[backup] fingerprints = value for every command from now on ("true": on every engine)."""
    config = tmp_path / "casbackup.toml"
    config.write_text(f"[backup]\nfingerprints = {value}\n")
    monkeypatch.setenv("CASBACKUP_CONFIG", str(config))


def verify(cli: Any, engine: Engine | None, *args: str) -> tuple[int, dict[str, Any]]:
    result = cli(engine, "verify", *args, "--json")
    return result.code, result.json()


def scratch_databases(engine: Engine) -> list[str]:
    return [
        db
        for (db,) in engine.sql("SELECT name FROM system.databases")
        if db.startswith(SCRATCH_PREFIX)
    ]


def packs(repo: Path) -> list[Path]:
    return sorted(
        p for p in (repo / "packs").rglob("*") if p.is_file() and not p.name.startswith(".")
    )


def only(problems: list[dict[str, str]], level: str) -> list[dict[str, str]]:
    return [p for p in problems if p["level"] == level]


def test_healthy_repository_passes_every_level(engine: Engine, dbname: str, cli: Any) -> None:
    backed_up(engine, dbname, cli)
    for args in (
        [],
        ["--read-data"],
        ["--restore"],
        ["--read-data", "--restore", "--subset", "1/1"],
    ):
        code, report = verify(cli, engine, *args)
        assert code == 0 and report["ok"] and report["problems"] == [], (args, report)
    code, report = verify(cli, engine, "--restore")
    [table] = report["tables"]
    assert table["rows_found"] == 300_000
    assert table["checksums"] == "passed" and table["fingerprint"] == "not recorded"
    assert table["check_table"] == ("passed" if engine.modern else "not supported")
    assert scratch_databases(engine) == []
    text = cli(engine, "verify", "b1", "--restore")
    assert text.code == 0 and "verify OK" in text.stdout


def test_flipped_byte_is_found_by_read_data(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    backed_up(engine, dbname, cli)
    target = packs(tmp_path / "repo")[0]
    flip_byte(target, 100, 0x10)
    code, report = verify(cli, engine)
    assert code == 0, "structure cannot see a flipped byte: same size, same name"
    code, report = verify(cli, engine, "--read-data")
    assert code == ExitCode.VERIFY_FAILED
    problems = only(report["problems"], "data")
    assert any(
        p["object"] == f"pack {target.name}" and "does not match its name" in p["detail"]
        for p in problems
    )
    assert any(
        p["object"].startswith("chunk ") and target.name in p["object"] and "b1" in p["detail"]
        for p in problems
    )


def test_a_damaged_pack_needed_by_many_backups_says_the_list_is_cut(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """'needed by b1, b2, b3' named three of five backups as if they were all, beside
    advice to `casbackup delete` them; the other places that cut such a list add '…'."""
    backed_up(engine, dbname, cli, rows=20_000)
    for name in ("b2", "b3", "b4", "b5"):
        assert cli(engine, "create", name, "--tables", f"{dbname}.*").code == 0
    [target] = packs(tmp_path / "repo")
    flip_byte(target, 100, 0x10)
    code, report = verify(cli, engine, "--read-data")
    assert code == ExitCode.VERIFY_FAILED
    [damaged] = [p for p in report["problems"] if p["object"] == f"pack {target.name}"]
    assert "(damaged; needed by b1, b2, b3 …)" in damaged["detail"], damaged


def test_truncated_pack_is_found_by_structure(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    backed_up(engine, dbname, cli)
    target = packs(tmp_path / "repo")[0]
    os.truncate(target, target.stat().st_size - 7)
    code, report = verify(cli, engine)
    assert code == ExitCode.VERIFY_FAILED
    [problem] = report["problems"]
    assert problem["level"] == "structure" and problem["object"] == f"pack {target.name}"
    assert "truncated" in problem["detail"]
    assert "footer magic missing" in problem["detail"]
    assert "restore the pack from a copy" in problem["detail"]


@pytest.mark.parametrize("damage", ["size + 7", "size - 7"], ids=["larger", "smaller"])
def test_a_wrong_pack_size_in_the_catalog_blames_the_catalog_not_the_pack(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path, damage: str
) -> None:
    """The store is the truth, the catalog an index of it. A damaged packs.size row made
    structure call the sound pack "truncated or replaced" and advise restoring it from a copy
    or deleting the backups that need it; its trailer, read from the object's end, says the
    pack is whole."""
    backed_up(engine, dbname, cli, rows=20_000)
    target = packs(tmp_path / "repo")[0]
    with sqlite3.connect(tmp_path / "repo" / "catalog.sqlite") as raw:
        raw.execute(f"UPDATE packs SET size = {damage} WHERE digest = ?", (target.name,))
    for args in ([], ["--read-data"]):  # the pack reads whole and matches its name
        code, report = verify(cli, engine, *args)
        assert code == ExitCode.VERIFY_FAILED
        [problem] = report["problems"]
        assert problem["level"] == "catalog" and problem["object"] == f"pack {target.name}"
        sound = f"the pack is {target.stat().st_size} bytes in the store and sound"
        assert sound in problem["detail"]
        assert "run `casbackup catalog rebuild`" in problem["detail"]
        assert "truncated" not in problem["detail"] and "restore the pack" not in problem["detail"]
    assert cli(engine, "catalog", "rebuild").code == 0
    assert verify(cli, engine, "--read-data")[0] == 0


def test_a_pack_replaced_by_another_is_blamed_on_the_pack(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """A whole, readable pack under the name: its trailer parses at its size, but it does
    not hold the chunks the catalog indexed there, so the catalog's size is not the wrong one."""
    backed_up(engine, dbname, cli, rows=20_000)
    engine.sql(
        f"INSERT INTO `{dbname}`.events SELECT number, toDate('2024-06-01'), 7, 'x', number, 1 "
        "FROM numbers(5000)"
    )
    assert cli(engine, "create", "b2", "--tables", f"{dbname}.*").code == 0
    sizes = {p.stat().st_size: p for p in packs(tmp_path / "repo")}
    assert len(sizes) >= 2
    target, other = (sizes[s] for s in sorted(sizes)[:2])
    target.write_bytes(other.read_bytes())
    code, report = verify(cli, engine)
    assert code == ExitCode.VERIFY_FAILED
    [problem] = report["problems"]
    assert problem["level"] == "structure" and problem["object"] == f"pack {target.name}"
    assert "truncated or replaced: its trailer does not list chunk" in problem["detail"]
    assert "restore the pack from a copy" in problem["detail"]


def test_deleted_pack_is_found_by_structure(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    backed_up(engine, dbname, cli)
    target = packs(tmp_path / "repo")[-1]
    target.unlink()
    code, report = verify(cli, engine)
    assert code == ExitCode.VERIFY_FAILED
    assert {(p["level"], p["object"]) for p in report["problems"]} == {
        ("structure", f"pack {target.name}")
    }
    assert "missing from the store (needed by b1)" in report["problems"][0]["detail"]
    failed = cli(engine, "verify")
    assert (
        failed.stderr.strip()
        .splitlines()[-1]
        .startswith("casbackup: error: verification failed: [structure] pack ")
    )


def test_damage_findings_say_what_to_do(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """A damaged manifest or pack was named with no word of a remedy."""
    backed_up(engine, dbname, cli, rows=20_000)
    manifest = tmp_path / "repo" / "manifests" / "b1"
    good = manifest.read_bytes()
    flip_byte(manifest, len(good) // 2)
    code, report = verify(cli, engine)
    assert code == ExitCode.VERIFY_FAILED
    [problem] = report["problems"]
    assert "digest mismatch" in problem["detail"]
    assert "restore the manifest from a copy" in problem["detail"]
    assert "`casbackup delete b1` if the backup is lost" in problem["detail"]
    manifest.write_bytes(good)
    target = packs(tmp_path / "repo")[0]
    for damage, args in ((lambda: flip_byte(target, 100), ["--read-data"]), (target.unlink, [])):
        damage()
        code, report = verify(cli, engine, *args)
        assert code == ExitCode.VERIFY_FAILED
        said = [p["detail"] for p in report["problems"] if p["object"] == f"pack {target.name}"]
        assert said and all("restore the pack from a copy" in d for d in said), said


def test_deleted_manifest_is_found_by_structure(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    backed_up(engine, dbname, cli)
    (tmp_path / "repo" / "manifests" / "b1").unlink()
    code, report = verify(cli, engine)
    assert code == ExitCode.VERIFY_FAILED
    assert report["problems"][0] == {
        "level": "structure",
        "object": "backup b1",
        "detail": "its manifest is missing from the store (if another host deleted the backup, "
        "`casbackup catalog sync` forgets it; if not, the backup is lost)",
    }


def test_another_hosts_gc_is_a_stale_catalog_not_a_lost_pack(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another host deleted b1 and its gc repacked what b2 still needs, then deleted the pack.

    This catalog still locates b2's chunks in the deleted pack: verify called
    that `missing from the store (needed by b2)`, as if data were lost, with
    no word of the sync that fixes it (operations.md promises that advice).
    """
    backed_up(engine, dbname, cli, rows=20_000)
    engine.sql(f"ALTER TABLE `{dbname}`.events DROP PARTITION 202401")
    assert cli(engine, "create", "b2", "--tables", f"{dbname}.*").code == 0
    monkeypatch.setenv("CASBACKUP_CATALOG", f"sqlite:///{tmp_path / 'other-host.sqlite'}")
    assert cli(engine, "catalog", "rebuild").code == 0
    assert cli(engine, "delete", "b1").code == 0
    for _ in range(2):  # repack and condemn, then delete
        assert cli(engine, "gc", "--min-age", "0s", "--repack-below", "0.99").code == 0
    monkeypatch.delenv("CASBACKUP_CATALOG")

    code, report = verify(cli, engine)
    assert code == ExitCode.VERIFY_FAILED
    packs_said = [p for p in report["problems"] if p["object"].startswith("pack ")]
    assert packs_said and all(p["level"] == "catalog" for p in packs_said), packs_said
    assert any(
        "in packs the catalog does not know yet" in p["detail"]
        and "run `casbackup catalog sync`" in p["detail"]
        for p in packs_said
    )
    [manifest] = [p for p in report["problems"] if p["object"] == "backup b1"]
    assert "`casbackup catalog sync` forgets it" in manifest["detail"]
    assert cli(engine, "catalog", "sync").code == 0
    assert verify(cli, engine, "--read-data")[0] == 0


def test_an_unreadable_stray_pack_is_not_sent_to_catalog_sync(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """A stray object under packs/ that no sync can index failed verify for ever, saying "sync"."""
    backed_up(engine, dbname, cli, rows=20_000)
    stray = tmp_path / "repo" / "packs" / "ab" / ("ab" * 32)
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"not a pack" * 100)
    assert cli(engine, "catalog", "sync").code == ExitCode.WARNING  # cannot index it
    code, report = verify(cli, engine)
    assert code == ExitCode.VERIFY_FAILED
    [problem] = report["problems"]
    assert problem["level"] == "structure" and problem["object"] == f"pack {'ab' * 32}"
    assert "footer magic missing" in problem["detail"] and "move it away" in problem["detail"]
    assert "run `casbackup catalog sync`" not in problem["detail"]
    stray.unlink()
    assert verify(cli, engine)[0] == 0


def test_catalog_pointing_at_wrong_offset_is_found_by_read_data(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    backed_up(engine, dbname, cli)
    with sqlite3.connect(tmp_path / "repo" / "catalog.sqlite") as raw:
        (digest,) = raw.execute("SELECT digest FROM chunks ORDER BY length DESC LIMIT 1").fetchone()
        raw.execute('UPDATE chunks SET "offset" = "offset" + 3 WHERE digest = ?', (digest,))
    assert verify(cli, engine)[0] == 0  # structure trusts the catalog's locations
    code, report = verify(cli, engine, "--read-data")
    assert code == ExitCode.VERIFY_FAILED
    [problem] = report["problems"]
    assert (
        problem["object"] == f"chunk {digest}"
        and "the catalog locates it at offset" in problem["detail"]
    )


@pytest.mark.parametrize(
    "damage", ["raw_size = raw_size + 1", "compression = 0"], ids=["raw_size", "compression"]
)
def test_catalog_decoding_a_chunk_wrongly_is_found_by_read_data(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path, damage: str
) -> None:
    """A restore decompresses with the catalog's raw size and compression, so both are checked.

    --read-data compared only offsets and lengths with the trailer: it passed
    a catalog that made every restore of the backup fail.
    """
    backed_up(engine, dbname, cli, rows=20_000)
    with sqlite3.connect(tmp_path / "repo" / "catalog.sqlite") as raw:
        (digest,) = raw.execute(
            "SELECT digest FROM chunks WHERE compression = 1 ORDER BY length DESC LIMIT 1"
        ).fetchone()
        raw.execute(f"UPDATE chunks SET {damage} WHERE digest = ?", (digest,))
    code, report = verify(cli, engine, "--read-data")
    assert code == ExitCode.VERIFY_FAILED
    [problem] = report["problems"]
    assert problem["object"] == f"chunk {digest}"
    assert "the pack has it at" in problem["detail"]
    assert "run `casbackup catalog rebuild`" in problem["detail"]


def test_catalog_chunk_list_differing_from_the_manifest_is_found_by_structure(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """gc and create trust the catalog's chunk lists of files; restore the manifest's.

    A list pointing at another indexed chunk (same count, so gc's checks of an
    incomplete index pass) passed every verify level, restores included.
    """
    backed_up(engine, dbname, cli, rows=20_000)
    with sqlite3.connect(tmp_path / "repo" / "catalog.sqlite") as raw:
        (file_digest,) = raw.execute(
            "SELECT file_digest FROM file_chunks ORDER BY file_digest LIMIT 1"
        ).fetchone()
        raw.execute(
            "UPDATE file_chunks SET chunk_digest = "
            "(SELECT max(digest) FROM chunks WHERE digest NOT IN "
            " (SELECT chunk_digest FROM file_chunks WHERE file_digest = ?)) "
            "WHERE file_digest = ?",
            (file_digest, file_digest),
        )
    code, report = verify(cli, engine)
    assert code == ExitCode.VERIFY_FAILED
    [problem] = report["problems"]
    assert problem["level"] == "catalog" and problem["object"] == "backup b1"
    assert f"differs from the manifest's, e.g. file {file_digest}" in problem["detail"]
    assert "run `casbackup catalog rebuild`" in problem["detail"]
    assert cli(engine, "catalog", "rebuild").code == 0
    assert verify(cli, engine)[0] == 0


def test_part_altered_before_attach_is_found_by_restore(
    engine: Engine, dbname: str, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    backed_up(engine, dbname, cli)
    done: list[bool] = []

    def altered(staged: StagedParts) -> None:
        if not done:
            temp = staged[0][1]
            victim = max((p for p in temp.rglob("*.bin")), key=lambda p: p.stat().st_size)
            # same size: ATTACH PART only checks sizes
            flip_byte(victim, victim.stat().st_size // 2)
            done.append(True)

    after_staging(monkeypatch, altered)
    assert verify(cli, engine, "--read-data")[0] == 0  # the repository itself is fine
    code, report = verify(cli, engine, "--restore")
    assert code == ExitCode.VERIFY_FAILED
    [problem] = report["problems"]
    assert problem["level"] == "restore" and problem["object"] == f"b1: {dbname}.events"
    assert (
        "does not match its checksum in checksums.txt; no part of this table was attached"
        in (problem["detail"])
    )
    assert report["tables"][0]["checksums"] == "failed"
    assert scratch_databases(engine) == []  # dropped although verification failed


def test_a_failure_after_the_checksum_check_keeps_its_result(
    engine: Engine, dbname: str, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from casbackup.clickhouse.server import ClickHouseServer

    backed_up(engine, dbname, cli, rows=20_000)
    monkeypatch.setattr(ClickHouseServer, "part_rows", lambda *_: 0)  # rows never arrive
    code, report = verify(cli, engine, "--restore")
    assert code == ExitCode.VERIFY_FAILED
    [table] = report["tables"]
    assert table["checksums"] == "passed" and not table["ok"]
    [problem] = report["problems"]
    assert "0 rows after attaching, the backup recorded 20000" in problem["detail"]
    assert scratch_databases(engine) == []


def test_sound_part_holding_other_rows_is_found_by_restore(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restored part whose files are all valid but hold other rows than were frozen.

    Same sizes (ATTACH checks only those), intact compressed blocks (the full
    scan passes), same row count: only a check against what the source had
    sees it: verify's check of every file against checksums.txt, on both
    engines (18.16 has no CHECK TABLE), the reason backups take no row
    fingerprints by default.
    """
    from casbackup.restore import RestoreService

    engine.sql(f"CREATE DATABASE `{dbname}`")
    # Two constants with the same byte period compress to files of the same size.
    for table, value in (("a", 0x0102030405060708), ("b", 0x0807060504030201)):
        engine.sql(
            f"CREATE TABLE `{dbname}`.{table} (x UInt64) ENGINE = MergeTree ORDER BY tuple()"
        )
        engine.sql(f"INSERT INTO `{dbname}`.{table} SELECT toUInt64({value}) FROM numbers(50000)")
    [(other,)] = engine.sql(
        f"SELECT path FROM system.parts WHERE database = '{dbname}' AND table = 'b' AND active"
    )
    assert cli(engine, "init").code == 0
    assert cli(engine, "create", "b1", "--tables", f"{dbname}.a").code == 0

    def swapped(staged: StagedParts) -> None:
        for _, temp in staged:
            for victim in temp.rglob("*.bin"):
                replacement = Path(other) / victim.relative_to(temp)
                assert replacement.stat().st_size == victim.stat().st_size
                victim.write_bytes(replacement.read_bytes())

    after_staging(monkeypatch, swapped)
    code, report = verify(cli, engine, "--restore")
    assert code == ExitCode.VERIFY_FAILED
    [problem] = report["problems"]
    assert problem["object"] == f"b1: {dbname}.a"
    assert problem["detail"].startswith("restore of _casbackup_verify_")
    assert ".bin does not match its checksum in checksums.txt" in problem["detail"]
    assert scratch_databases(engine) == []
    set_fingerprints(tmp_path, monkeypatch, "true")  # the row check on its own sees it too
    monkeypatch.setattr(RestoreService, "_check_staged", lambda *_: 0)
    assert cli(engine, "create", "b2", "--tables", f"{dbname}.a").code == 0
    code, report = verify(cli, engine, "b2", "--restore")
    assert code == ExitCode.VERIFY_FAILED
    details = {p["detail"] for p in report["problems"]}
    assert "same row count, different content (row hashes differ)" in details


def test_check_table_failing_to_run_is_reported_not_failed(
    engine: Engine, dbname: str, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file was checked against checksums.txt already; CHECK TABLE is a second opinion."""
    if not engine.modern:
        pytest.skip("18.16 has no CHECK TABLE for MergeTree")
    from casbackup.clickhouse.embedded import EmbeddedClient
    from casbackup.errors import ClickHouseError

    backed_up(engine, dbname, cli, rows=20_000)
    real = EmbeddedClient.query

    def refusing(self: EmbeddedClient, sql: str) -> Any:
        if sql.startswith("CHECK TABLE"):
            raise ClickHouseError(detail="Not enough privileges")
        return real(self, sql)

    monkeypatch.setattr(EmbeddedClient, "query", refusing)
    code, report = verify(cli, engine, "--restore")
    [table] = report["tables"]
    assert code == 0 and table["checksums"] == "passed"
    assert table["check_table"].startswith("not run: ")
    assert "Not enough privileges" in table["check_table"]


def test_parts_without_checksums_fail_verify(
    engine: Engine, dbname: str, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing ties such a part to the frozen data: not the check, a fingerprint or CHECK TABLE."""
    backed_up(engine, dbname, cli, rows=20_000)

    def without_checksums(staged: StagedParts) -> None:
        (staged[0][1] / "checksums.txt").unlink()  # as in parts older than 2016

    after_staging(monkeypatch, without_checksums)
    code, report = verify(cli, engine, "--restore")
    assert code == ExitCode.VERIFY_FAILED
    assert report["tables"][0]["checksums"].startswith("1 of ")
    [problem] = report["problems"]
    assert problem["object"] == f"b1: {dbname}.events"
    assert problem["detail"].startswith("1 of ")
    assert "parts have no checksums.txt (written before 2016)" in problem["detail"]
    assert scratch_databases(engine) == []


def test_verify_one_backup_and_tables(engine: Engine, dbname: str, cli: Any) -> None:
    backed_up(engine, dbname, cli)
    assert cli(engine, "create", "b2", "--tables", f"{dbname}.*").code == 0
    code, report = verify(cli, engine, "b2", "--restore", "--tables", f"{dbname}.events")
    assert (
        code == 0
        and report["backups"] == ["b2"]
        and [t["table"] for t in report["tables"]] == [f"{dbname}.events"]
    )
    # Typos are the operator's, not failed verifications (exit 19 is for damage).
    unknown = cli(engine, "verify", "nope")
    assert unknown.code == ExitCode.NOT_FOUND and "no backup named 'nope'" in unknown.stderr
    nothing = cli(engine, "verify", "b2", "--restore", "--tables", "zzz.*")
    assert nothing.code == ExitCode.NOT_FOUND and "zzz.*" in nothing.stderr
    without_restore = cli(engine, "verify", "b2", "--tables", f"{dbname}.events")
    assert without_restore.code == ExitCode.USAGE
    assert "--tables chooses what --restore restores" in without_restore.stderr


def test_a_drill_of_nothing_does_not_pass(engine: Engine, cli: Any) -> None:
    """`verify "$(casbackup list ...)" --restore` on an empty repository said "verify OK"."""
    assert cli(None, "init").code == 0
    empty = cli(engine, "verify", "", "--restore")
    assert empty.code == ExitCode.USAGE and "the backup name is empty" in empty.stderr
    assert cli(engine, "create", "").code == ExitCode.USAGE
    nothing = cli(engine, "verify", "--restore")
    assert nothing.code == ExitCode.NOT_FOUND
    assert "holds no committed backup to test-restore" in nothing.stderr
    assert cli(None, "verify").code == 0  # the structure of an empty repository is sound
    assert cli(None, "list", "--json").json() == []


def scans(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The parts each backup from now on scans for fingerprints, one list per table."""
    import casbackup.backup as backup_module

    scanned: list[list[str]] = []
    real = backup_module.part_fingerprints

    def spy(server: Any, database: str, table: str, parts: list[str], hashing: Any) -> Any:
        scanned.append(list(parts))
        return real(server, database, table, parts, hashing)

    monkeypatch.setattr(backup_module, "part_fingerprints", spy)
    return scanned


@pytest.mark.parametrize("setting", [None, '"auto"'])
def test_fingerprints_are_off_unless_asked_for(
    engine: Engine,
    dbname: str,
    cli: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    setting: str | None,
) -> None:
    """The default, and "auto" (the default before verify checked checksums.txt), scan nothing."""
    if setting is not None:
        set_fingerprints(tmp_path, monkeypatch, setting)
    scanned = scans(monkeypatch)
    backed_up(engine, dbname, cli, rows=20_000)
    repo = Repository.open(LocalStore(tmp_path / "repo"))
    taken = [p.fingerprint is not None for t in repo.read_manifest("b1").tables for p in t.parts]
    assert taken and set(taken) == {False}
    assert scanned == []


def test_fingerprints_scan_only_new_parts(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_fingerprints(tmp_path, monkeypatch, "true")
    scanned = scans(monkeypatch)
    backed_up(engine, dbname, cli)
    first = scanned[-1]
    assert len(first) > 1  # the first backup scans every part
    assert cli(engine, "create", "b2", "--tables", f"{dbname}.*").code == 0
    assert scanned[-1] == []  # nothing new: nothing scanned
    mutate(engine, f"ALTER TABLE `{dbname}`.events UPDATE v = v + 1 WHERE toYYYYMM(d) = 202402")
    assert cli(engine, "create", "b3", "--tables", f"{dbname}.*").code == 0
    assert scanned[-1] and all(
        p.startswith("202402_") for p in scanned[-1]
    )  # renamed parts reuse theirs
    repo = Repository.open(LocalStore(tmp_path / "repo"))
    assert all(p.fingerprint is not None for t in repo.read_manifest("b3").tables for p in t.parts)
    assert verify(cli, engine, "b3", "--restore")[1]["tables"][0]["fingerprint"] == "match"


def test_a_manifest_damaged_in_a_part_other_backups_share_is_still_refused(
    cli: Any, tmp_path: Path
) -> None:
    """verify validates a part the backups kept share once, not per backup (DecodeMemo).

    A manifest whose copy of such a part is unsafe, written with a valid
    digest, is one problem with the error it gets decoded alone; the backups
    before and after it, holding the sound part, pass.
    """
    assert cli(None, "init").code == 0
    repo_dir = tmp_path / "repo"
    repo = Repository.open(LocalStore(repo_dir))
    write_tree(tmp_path / "data" / "all_1_1_0", {"data.bin": b"x" * 1000, "count.txt": b"1000"})
    with Catalog.open(f"sqlite:///{repo_dir / 'catalog.sqlite'}", repo.id) as catalog:
        for name in ("b1", "b2", "b3"):
            snapshot_directory(repo, catalog, name, tmp_path / "data")

    def unsafe(doc: dict[str, Any]) -> None:
        doc["tables"][0]["parts"][0]["files"][0]["path"] = "../escape"

    from tests.cli.test_older_releases import rewrite_manifest  # which imports this module

    rewrite_manifest(repo_dir, "b2", unsafe)
    with pytest.raises(CasbackupError) as alone:
        mf.decode((repo_dir / manifest_key("b2")).read_bytes(), "b2")
    code, report = verify(cli, None)
    assert code == ExitCode.VERIFY_FAILED
    [problem] = report["problems"]
    assert (problem["level"], problem["object"]) == ("structure", "backup b2")
    assert alone.value.message in problem["detail"] and "../escape" in problem["detail"]


def test_subset_windows_cover_everything_over_consecutive_days() -> None:
    packs = {os.urandom(32): 1 for _ in range(500)}
    seen: set[bytes] = set()
    for day in range(20):
        chosen, _ = choose_subset(packs, "5%", day * 86400.0)
        assert 5 <= len(chosen) <= 50
        seen |= chosen
    assert seen == set(packs)
    groups = [choose_subset(packs, f"{n}/4", 0)[0] for n in range(1, 5)]
    assert set().union(*groups) == set(packs) and sum(map(len, groups)) == len(packs)
    sized, _ = choose_subset(packs, "10", 0)
    assert len(sized) == 10


def test_without_fingerprints_restore_compares_rows(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[backup] fingerprints = false: no scan at backup time, and verify --restore says so."""
    set_fingerprints(tmp_path, monkeypatch, "false")
    backed_up(engine, dbname, cli, rows=20_000)
    code, report = verify(cli, engine, "--restore")
    [table] = report["tables"]
    assert code == 0 and table["fingerprint"] == "not recorded"
    assert table["rows_found"] == 20_000


def test_fingerprints_follow_a_column_added_without_rewriting_parts(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ADD COLUMN changes no part (same checksums.txt) but what a row hashes to.

    A fingerprint recorded before the ALTER hashed fewer columns: reusing it
    for the unchanged parts would make verify --restore report a mismatch on a
    healthy backup. Recorded fingerprints name the expression they hashed.
    """
    set_fingerprints(tmp_path, monkeypatch, "true")
    backed_up(engine, dbname, cli, rows=20_000)
    engine.sql(f"ALTER TABLE `{dbname}`.events ADD COLUMN note String DEFAULT 'n'")
    assert cli(engine, "create", "b2", "--tables", f"{dbname}.*").code == 0
    code, report = verify(cli, engine, "b2", "--restore")
    assert code == 0, report["problems"]
    assert report["tables"][0]["fingerprint"] == "match"
    code, report = verify(cli, engine, "b1", "--restore")
    assert code == 0 and report["tables"][0]["fingerprint"] == "match"


def test_rows_past_their_ttl_at_backup_time_still_verify(
    chdb_engine: Engine, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Expired rows sit in parts until a TTL merge (every 4 h by default) drops them.

    The backup holds them and so does its fingerprint; the scratch copy,
    merges running again after ATTACH, dropped them in its first merge, and
    verify reported "100 rows after restore, 200 at backup time" for a sound
    backup. Here that merge is asked for just before the check, instead of
    waiting for the server to schedule one.
    """
    check_table = Verifier._check_table

    def merged_then_checked(
        self: Verifier, check: Any, table: Any, database: str, name: str
    ) -> None:
        with contextlib.suppress(ClickHouseError):  # refused while the table's merges are stopped
            self.server.execute(f"OPTIMIZE TABLE {qualified(database, name)} FINAL")  # type: ignore[union-attr]
        check_table(self, check, table, database, name)

    monkeypatch.setattr(Verifier, "_check_table", merged_then_checked)
    set_fingerprints(tmp_path, monkeypatch, "true")
    db = "t_ttl_verify"
    chdb_engine.sql(f"DROP DATABASE IF EXISTS {db}")
    chdb_engine.sql(f"CREATE DATABASE {db}")
    chdb_engine.sql(
        f"CREATE TABLE {db}.t (k UInt32, d DateTime) ENGINE = MergeTree ORDER BY k "
        "TTL d + INTERVAL 1 DAY"
    )
    chdb_engine.sql(f"SYSTEM STOP TTL MERGES {db}.t")  # as between two scheduled TTL merges
    chdb_engine.sql(f"INSERT INTO {db}.t SELECT number, toDateTime('2000-01-01') FROM numbers(100)")
    chdb_engine.sql(f"INSERT INTO {db}.t SELECT number, now() FROM numbers(100)")
    assert cli(chdb_engine, "init").code == 0
    assert cli(chdb_engine, "create", "b", "--tables", f"{db}.*").code == 0
    code, report = verify(cli, chdb_engine, "b", "--restore")
    assert code == 0, report["problems"]
    [table] = report["tables"]
    assert table["fingerprint"] == "match" and table["rows_found"] == 200
    assert scratch_databases(chdb_engine) == []
    chdb_engine.sql(f"DROP DATABASE {db}")


def test_fingerprints_recorded_before_expressions_were_named(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fingerprints without an expression id were summed by the legacy expression.

    verify computes that one for them (on 18.16 it hashes the Decimal column
    through toString, the current one through its integer parts), and a new
    backup does not reuse them: it scans those parts once, by the current one.
    """
    import casbackup.backup as backup_module
    from casbackup.clickhouse.fingerprint import part_fingerprints, row_hash
    from casbackup.repo.manifest import PartFingerprint

    set_fingerprints(tmp_path, monkeypatch, "true")

    def legacy_scan(server: Any, table: Any, parts: list[str], hashing: Any) -> Any:
        legacy = row_hash(server, table.database, table.name, legacy=True)
        found = part_fingerprints(server, table.database, table.name, parts, legacy)
        return {n: PartFingerprint(rows=fp.rows, hash=fp.hash) for n, fp in found.items()}

    with monkeypatch.context() as patch:
        patch.setattr(backup_module.BackupService, "_scan", staticmethod(legacy_scan))
        backed_up(engine, dbname, cli, rows=20_000)
    scanned = scans(monkeypatch)
    assert cli(engine, "create", "b2", "--tables", f"{dbname}.*").code == 0
    parts = engine.value(
        f"SELECT count() FROM system.parts WHERE database = '{dbname}' AND table = 'events' AND active"
    )
    assert len(scanned[-1]) == parts  # legacy fingerprints are not reused
    for name in ("b1", "b2"):
        code, report = verify(cli, engine, name, "--restore")
        assert code == 0 and report["tables"][0]["fingerprint"] == "match", (name, report)


@pytest.mark.parametrize(
    "type_, values",
    [
        ("Decimal(9, 9)", ["-0.999999999", "0.999999999", "0", "-0.000000001", "0.000000001"]),
        ("Decimal(18, 2)", ["-9999999999999999.99", "9999999999999999.99", "-0.01", "0.01", "-1"]),
        ("Nullable(Decimal(18, 9))", ["NULL", "0", "-999999999.999999999", "0.5", "-0.5"]),
        ("Decimal(18, 0)", ["-999999999999999999", "999999999999999999", "0", "1", "-1"]),
        ("Decimal(12, 2)", ["-9999999999.99", "9999999999.99", "-0.01", "0.01", "0"]),
        ("Nullable(Decimal(9, 4))", ["NULL", "0", "-99999.9999", "99999.9999", "0.0001"]),
        ("Decimal(38, 4)", ["1.5", "-1.5", "0.0001", "-0.0001", "0"]),
    ],
)
def test_decimal_fingerprint_is_exact(
    engine: Engine, dbname: str, type_: str, values: list[str]
) -> None:
    """Every distinct Decimal value hashes distinctly, 18.16's integer-parts form included."""
    from casbackup.clickhouse.fingerprint import row_hash
    from tests.clickhouse.schema import server_for

    engine.sql(f"CREATE DATABASE `{dbname}`")
    engine.sql(f"CREATE TABLE `{dbname}`.d (x {type_}) ENGINE = MergeTree ORDER BY tuple()")
    rows = " UNION ALL ".join(
        f"SELECT CAST({v if v == 'NULL' else repr(v)} AS {type_})" for v in values
    )
    engine.sql(f"INSERT INTO `{dbname}`.d {rows}")
    server = server_for(engine)
    try:
        expression = row_hash(server, dbname, "d").expression
    finally:
        server.close()
    if not engine.modern:  # 18.16 cannot cityHash64 a Decimal
        wide = type_ == "Decimal(38, 4)"
        assert ("toString" in expression) == wide and ("toInt64" in expression) != wide
    distinct = engine.value(f"SELECT uniqExact({expression}) FROM `{dbname}`.d")
    assert distinct == len(values)


def test_fingerprint_a_server_now_hashes_differently_is_not_comparable(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an upgrade that changes how the server hashes a column: rows compare, hashes cannot."""
    import casbackup.verify as verify_module
    from casbackup.clickhouse.fingerprint import RowHash

    set_fingerprints(tmp_path, monkeypatch, "true")
    backed_up(engine, dbname, cli, rows=20_000)
    real = verify_module.row_hash

    def upgraded(*args: Any, **kwargs: Any) -> RowHash:
        hashing = real(*args, **kwargs)
        return RowHash(f"cityHash64({hashing.expression}, 1)", hashing.columns)

    monkeypatch.setattr(verify_module, "row_hash", upgraded)
    code, report = verify(cli, engine, "--restore")
    [table] = report["tables"]
    assert code == 0 and report["problems"] == []
    assert table["fingerprint"] == "not comparable" and table["rows_found"] == 20_000


def test_a_database_whose_name_holds_a_dot_verifies(engine: Engine, dbname: str, cli: Any) -> None:
    """The restored table's name was read back by splitting `db.table` at its first dot:
    every table of database `shop.eu` failed as `..._shop does not exist`."""
    db = f"{dbname}.eu"
    engine.sql(f"CREATE DATABASE `{db}`")
    engine.sql(f"CREATE TABLE `{db}`.t (k UInt32) ENGINE = MergeTree ORDER BY k")
    engine.sql(f"INSERT INTO `{db}`.t SELECT number FROM numbers(10)")
    engine.sql(
        f"CREATE MATERIALIZED VIEW `{db}`.mv ENGINE = MergeTree ORDER BY k AS SELECT k FROM `{db}`.t"
    )
    engine.sql(f"INSERT INTO `{db}`.t SELECT number FROM numbers(5)")
    assert cli(engine, "init").code == 0
    assert cli(engine, "create", "b", "--tables", f"{db}.*").code == 0
    code, report = verify(cli, engine, "b", "--restore")
    assert code == 0, report["problems"]
    assert sorted(t["rows_found"] for t in report["tables"]) == [5, 15]
    assert scratch_databases(engine) == []
