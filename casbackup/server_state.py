"""Server state beyond table data: access control, SQL functions, named collections, files.

- **Access entities** (users, roles, quotas, row policies, settings profiles
  and their grants) are captured as the SQL that recreates them, with
  ``SHOW ACCESS``. Servers without SQL access control (18.16 manages users
  only in users.xml) are reported as such, not as an error; their users.xml
  travels with ``--configs``. Where access entities live in a local
  directory (``system.user_directories``), its files are stored too.
- **SQL functions** and **named collections** are captured always: they are
  few, and views that use a function need it back before they can be created.
  Named collections whose values the server hides (``[HIDDEN]``, unless it is
  configured to display secrets) are left out with a warning: restoring a
  placeholder would be worse than not restoring.
- **Directories** (the server's config directory, the access directory) are
  stored file by file through the same content-addressed path as parts, and
  restored into a staging directory, never over live files unless asked.

Restoring SQL objects follows one policy for objects that already exist:
``skip`` (default; ``IF NOT EXISTS``), ``replace`` (``OR REPLACE``) or
``fail`` (checked for every object before anything is changed).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from casbackup import interrupts
from casbackup.catalog import Catalog
from casbackup.clickhouse.server import ClickHouseServer
from casbackup.clickhouse.sql import Kind, quote_identifier, rename_databases, tokenize
from casbackup.errors import ClickHouseError, FilesConflict, RestoreConflict, UsageError
from casbackup.file_errors import writing
from casbackup.process import NAME_MAX, cut_to_bytes, is_utf8, name_owner, tagged_name
from casbackup.repo import manifest as mf
from casbackup.repo.reader import ChunkFetcher, FileTarget, write_files
from casbackup.repo.repository import Repository
from casbackup.snapshot import SnapshotWriter

ON_EXISTING = ("skip", "replace", "fail")

_DISPLAY_SECRETS = "format_display_secrets_in_show_and_select = 1"
_SECRET_LITERAL = re.compile(r"\b(BY|SALT)\s+'(?:[^'\\]|\\.)*'", re.IGNORECASE)
# "IDENTIFIED WITH <a method that takes a secret>" not followed by BY: the secret was hidden.
_SECRET_HIDDEN = re.compile(
    r"IDENTIFIED WITH (plaintext_password|sha256_password|sha256_hash|double_sha1_password|"
    r"double_sha1_hash|bcrypt_password|bcrypt_hash|scram_sha256_password|scram_sha256_hash)"
    r"(?!\s+BY\b)",
    re.IGNORECASE,
)

# CREATE statements of access entities: keyword sequence -> system table listing them.
_ACCESS_KINDS: list[tuple[tuple[str, ...], str]] = [
    (("SETTINGS", "PROFILE"), "settings_profiles"),
    (("ROW", "POLICY"), "row_policies"),
    (("USER",), "users"),
    (("ROLE",), "roles"),
    (("QUOTA",), "quotas"),
]


@dataclass
class ObjectsReport:
    created: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (object, why)


# --- capture ----------------------------------------------------------------------------


def capture_access(server: ClickHouseServer) -> tuple[list[mf.ServerObject], list[str]] | None:
    """Access entities and grants as SQL, and warnings; None when the server has no SQL access control.

    Secrets (password hashes) appear only where the server's config allows
    ``display_secrets_in_show_and_select`` and the format setting asks for
    them; a user captured without its secret is named in a warning, because
    recreating it from that statement cannot give it its password back.
    """
    try:
        rows = server.client.query(f"SHOW ACCESS SETTINGS {_DISPLAY_SECRETS}")
    except ClickHouseError as exc:
        if "Syntax error" in exc.message or "Unknown" in exc.message:
            try:
                rows = server.client.query("SHOW ACCESS")  # older: no such setting
            except ClickHouseError as again:
                if "Syntax error" in again.message or "Unknown" in again.message:
                    return None  # 18.16: no SHOW ACCESS, no SQL-driven access control
                raise
        else:
            raise
    storages = _storages(server)
    objects, warnings = [], []
    for row in rows:
        sql = str(next(iter(row.values())))
        kind, name = describe_statement(sql)
        storage = storages.get((kind, name), "")
        objects.append(mf.ServerObject(kind=kind, name=name, create_sql=sql, storage=storage))
        # users.xml keeps its own users' secrets, and travels with --configs.
        if kind == "USER" and storage != "users_xml" and _SECRET_HIDDEN.search(sql):
            warnings.append(
                f"user {name} captured without its password (the server hides secrets: enable "
                "display_secrets_in_show_and_select in its config to back them up); "
                "restore --rbac cannot recreate it as it was"
            )
    return objects, warnings


def redact(sql: str) -> str:
    """A statement fit to print: password hashes and salts replaced by [HIDDEN]."""
    return _SECRET_LITERAL.sub(lambda m: f"{m.group(1)} '[HIDDEN]'", sql)


def _storages(server: ClickHouseServer) -> dict[tuple[str, str], str]:
    """(kind, name) -> the access storage holding it (users_xml, local_directory, replicated)."""
    found: dict[tuple[str, str], str] = {}
    for keywords, table in _ACCESS_KINDS:
        try:
            rows = server.client.query(f"SELECT name, storage FROM system.{table}")
        except ClickHouseError:
            continue  # a server without that table or column
        found |= {(" ".join(keywords), str(r["name"])): str(r["storage"]) for r in rows}
    return found


def access_directory(server: ClickHouseServer) -> Path | None:
    """Where the server keeps SQL-created access entities as files, if it does."""
    if "user_directories" not in server.info.system_tables:
        return None
    for row in server.client.query("SELECT type, params FROM system.user_directories"):
        if str(row["type"]) == "local_directory":
            try:
                path = json.loads(str(row["params"])).get("path")
            except ValueError:
                continue
            if path:
                return Path(path)
    return None


def capture_functions(server: ClickHouseServer) -> list[mf.ServerObject]:
    columns = {
        str(r["name"])
        for r in server.client.query(
            "SELECT name FROM system.columns WHERE database = 'system' AND table = 'functions'"
        )
    }
    if not {"origin", "create_query"} <= columns:
        return []
    rows = server.client.query(
        "SELECT name, create_query FROM system.functions WHERE origin = 'SQLUserDefined' ORDER BY name"
    )
    return [
        mf.ServerObject(kind="FUNCTION", name=str(r["name"]), create_sql=str(r["create_query"]))
        for r in rows
    ]


def capture_named_collections(server: ClickHouseServer) -> tuple[list[mf.ServerObject], list[str]]:
    if "named_collections" not in server.info.system_tables:
        return [], []
    try:
        rows = server.client.query(
            "SELECT name, create_query FROM system.named_collections "
            "SETTINGS format_display_secrets_in_show_and_select = 1"
        )
    except ClickHouseError as exc:
        return [], [f"named collections not captured: {exc.message}"]
    kept, warnings = [], []
    for r in rows:
        sql = str(r["create_query"])
        if "[HIDDEN]" in sql:
            warnings.append(
                f"named collection {r['name']} not captured: the server hides its values "
                "(enable display_secrets_in_show_and_select to back them up)"
            )
            continue
        kept.append(mf.ServerObject(kind="NAMED COLLECTION", name=str(r["name"]), create_sql=sql))
    return kept, warnings


def store_directory(
    snapshot: SnapshotWriter, root: Path, skipped: list[str] | None = None
) -> mf.FileSet:
    """Store every regular file under ``root`` (a symlinked file is stored as its target's content).

    What is not stored is said in ``skipped``, one line each, so that an
    incomplete config backup is never silent: a symlinked directory (not
    followed: it may lead anywhere, even back up the tree), a dangling link,
    a fifo or socket, and a name that is not UTF-8 (manifests hold text).
    """
    if not root.is_dir():
        raise UsageError(detail=f"{root} is not a directory")
    said = skipped if skipped is not None else []
    paths: list[tuple[Path, str, int]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in list(dirnames):
            if (Path(dirpath) / name).is_symlink():
                said.append(f"not stored: {_shown(Path(dirpath) / name)} (a symlinked directory)")
        for name in sorted(filenames):
            path = Path(dirpath) / name
            relative = path.relative_to(root).as_posix()
            if not is_utf8(relative):
                said.append(f"not stored: {_shown(path)} (its name is not UTF-8)")
                continue
            try:
                st = path.stat()
            except OSError:
                said.append(f"not stored: {_shown(path)} (a dangling symlink)")
                continue
            if stat.S_ISREG(st.st_mode):
                paths.append((path, relative, stat.S_IMODE(st.st_mode)))
            else:
                said.append(f"not stored: {_shown(path)} (not a regular file)")
    files = []
    for (_path, relative, mode), (_, stored) in zip(
        paths, snapshot.archiver.store_files([p for p, _, _ in paths]), strict=True
    ):
        snapshot.add_file(stored)
        files.append(
            mf.ServerFile(path=relative, file_id=stored.file_id, size=stored.size, mode=mode)
        )
    return mf.FileSet(source=str(root), files=files)


def _shown(path: Path) -> str:
    """A path for a message, undecodable bytes escaped."""
    return os.fsencode(path).decode(errors="backslashreplace")


def describe_statement(sql: str) -> tuple[str, str]:
    """(kind, name) of a CREATE or GRANT statement: ("USER", "bob"), ("GRANT", "")."""
    words = [t for t in tokenize(sql) if t.kind is not Kind.SPACE]
    if not words or words[0].text.upper() != "CREATE":
        return (words[0].text.upper() if words else "SQL"), ""
    upper = [w.text.upper() for w in words]
    for keywords, _table in _ACCESS_KINDS:
        if tuple(upper[1 : 1 + len(keywords)]) == keywords:
            position = 1 + len(keywords)
            while position < len(words) and upper[position] in (
                "IF",
                "NOT",
                "EXISTS",
                "OR",
                "REPLACE",
            ):
                position += 1
            name = words[position].identifier if position < len(words) else None
            return " ".join(keywords), name or ""
    return upper[1], ""


def grantees(sql: str) -> list[str]:
    """Who a GRANT statement grants to: the names after its last top-level TO, up to WITH."""
    words = [t for t in tokenize(sql) if t.kind is not Kind.SPACE]
    if not words or words[0].text.upper() != "GRANT":
        return []
    positions = [i for i, t in enumerate(words) if t.kind is Kind.WORD and t.text.upper() == "TO"]
    if not positions:
        return []
    names = []
    for token in words[positions[-1] + 1 :]:
        if token.kind is Kind.WORD and token.text.upper() == "WITH":
            break
        name = token.identifier
        if name is not None:
            names.append(name)
    return names


# --- restore -----------------------------------------------------------------------------


def _with_policy(sql: str, on_existing: str) -> str:
    """CREATE X ... -> CREATE X IF NOT EXISTS ... (skip) or CREATE X OR REPLACE / CREATE OR REPLACE X (replace)."""
    tokens = list(tokenize(sql))
    words = [i for i, t in enumerate(tokens) if t.kind is not Kind.SPACE]
    upper = [tokens[i].text.upper() for i in words]
    if not upper or upper[0] != "CREATE" or on_existing == "fail":
        return sql
    if upper[1] == "FUNCTION":  # CREATE [OR REPLACE] FUNCTION [IF NOT EXISTS] name
        if on_existing == "replace":
            return "CREATE OR REPLACE" + "".join(t.text for t in tokens[words[0] + 1 :])
        head = "".join(t.text for t in tokens[: words[1] + 1])
        return head + " IF NOT EXISTS" + "".join(t.text for t in tokens[words[1] + 1 :])
    for keywords, _table in [*_ACCESS_KINDS, (("NAMED", "COLLECTION"), "")]:
        if tuple(upper[1 : 1 + len(keywords)]) == keywords:
            if keywords == ("NAMED", "COLLECTION") and on_existing == "replace":
                return (
                    sql  # no OR REPLACE for named collections: dropped first, see restore_objects
                )
            clause = " IF NOT EXISTS" if on_existing == "skip" else " OR REPLACE"
            last = words[len(keywords)]
            return (
                "".join(t.text for t in tokens[: last + 1])
                + clause
                + "".join(t.text for t in tokens[last + 1 :])
            )
    return sql


def existing_objects(server: ClickHouseServer, kinds: set[str]) -> set[tuple[str, str]]:
    """(kind, name) of the access entities, SQL functions and named collections the server has.

    Only ``kinds`` are asked for. A listing the server refuses (a user
    without SHOW ACCESS rights) counts as empty: the statements themselves
    carry IF NOT EXISTS under the skip policy.
    """
    queries = [
        (" ".join(keywords), f"SELECT name FROM system.{table}")
        for keywords, table in _ACCESS_KINDS
        if table in server.info.system_tables
    ]
    if "functions" in server.info.system_tables:
        queries.append(
            ("FUNCTION", "SELECT name FROM system.functions WHERE origin = 'SQLUserDefined'")
        )
    if "named_collections" in server.info.system_tables:
        queries.append(("NAMED COLLECTION", "SELECT name FROM system.named_collections"))
    found: set[tuple[str, str]] = set()
    for kind, query in queries:
        if kind not in kinds and not (kind in ("USER", "ROLE") and "GRANT" in kinds):
            continue
        with contextlib.suppress(ClickHouseError):
            found |= {(kind, str(r["name"])) for r in server.client.query(query)}
    return found


def check_no_clashes(
    server: ClickHouseServer,
    objects: list[mf.ServerObject],
    present: set[tuple[str, str]] | None = None,
) -> None:
    """``--on-existing fail``: refuse before anything is changed if any object exists already."""
    present = existing_objects(server, {o.kind for o in objects}) if present is None else present
    clashes = sorted(f"{o.kind.lower()} {o.name}" for o in objects if (o.kind, o.name) in present)
    if clashes:
        raise RestoreConflict(
            detail=f"these already exist: {', '.join(clashes)} (--on-existing skip or replace)"
        )


def restore_objects(
    server: ClickHouseServer,
    objects: list[mf.ServerObject],
    *,
    on_existing: str = "skip",
    database_map: dict[str, str] | None = None,
) -> ObjectsReport:
    """Recreate SQL objects; what the server refuses is reported, the rest still restored."""
    if on_existing not in ON_EXISTING:
        raise UsageError(detail=f"--on-existing must be one of {', '.join(ON_EXISTING)}")
    report = ObjectsReport()
    present = existing_objects(server, {o.kind for o in objects})
    if on_existing == "fail":
        check_no_clashes(server, objects, present)
    mapping = {k: v for k, v in (database_map or {}).items() if k != v}
    kept = {name for kind, name in present if kind in ("USER", "ROLE")}
    for obj in objects:
        label = f"{obj.kind.lower()} {obj.name}".strip()
        if on_existing == "skip" and (obj.kind, obj.name) in present:
            report.skipped.append(label)
            continue
        if on_existing == "skip" and obj.kind == "GRANT":
            to = grantees(obj.create_sql)
            if to and set(to) <= kept:
                # Users and roles that were kept keep the grants they have.
                report.skipped.append(f"grant to {', '.join(to)}")
                continue
            label = f"grant to {', '.join(to)}"
        try:
            if (
                obj.kind == "NAMED COLLECTION"
                and on_existing == "replace"
                and (obj.kind, obj.name) in present
            ):
                server.execute(f"DROP NAMED COLLECTION {quote_identifier(obj.name)}")
            server.execute(_with_policy(rename_databases(obj.create_sql, mapping), on_existing))
            report.created.append(label or obj.create_sql[:60])
        except ClickHouseError as exc:
            report.failed.append((label or obj.create_sql[:60], exc.message))
    return report


def restore_directory(
    repo: Repository,
    catalog: Catalog,
    files: dict[bytes, mf.FileContent],
    fileset: mf.FileSet,
    target: Path,
    *,
    overwrite: bool,
) -> list[Path]:
    """Write a stored directory's files under ``target``; existing files only with ``overwrite``.

    Every file is written beside its destination under a temporary name and
    renamed over it only when all are written, so a restore stopped half-way
    (a signal, a full disk) leaves each file as it was: with ``overwrite``
    into a live config directory, deleting the old files first left the
    server with none. Half-written files would also make the next attempt
    need ``--overwrite``.
    """
    replaced_files(fileset, target, overwrite=overwrite)
    # Config files hold password hashes (users.xml): a directory the restore
    # makes for them is the owner's alone, whatever the umask (a drill found a
    # staged users.xml world-readable under a new host's 0755 state directory).
    # One that exists keeps its mode.
    with writing(target):
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
    prefix = tagged_name(TEMP_FILE_PREFIX)
    staged = [
        ((target / f.path).with_name(_temp_name(prefix, i, f.path)), target / f.path, f)
        for i, f in enumerate(fileset.files)
    ]
    for directory in sorted({temp.parent for temp, _, _ in staged}):
        _remove_stale_temporaries(directory)
    placed: list[Path] = []
    try:
        write_files(
            ChunkFetcher(repo.store, threads=2),
            catalog.index.locate,
            [FileTarget(temp, files[f.file_id], f.mode) for temp, _, f in staged],
        )
        with interrupts.deferred():  # the renames are the commit: all of them, once begun
            for temp, path, _ in staged:
                with writing(path):
                    os.replace(temp, path)
                placed.append(path)
    except BaseException:
        for temp, _, _ in staged:
            with contextlib.suppress(OSError):
                temp.unlink()
        if not overwrite:  # nothing was there before: leave nothing
            for path in placed:
                with contextlib.suppress(OSError):
                    path.unlink()
        raise
    return [path for _, path, _ in staged]


# Files being restored are written beside their destinations under
# ``.casbackup_tmp_<pid>_<start>_<rand>_<index>_<name>`` (``_temp_name``: the
# name cut to fit NAME_MAX, the index keeping cut names apart): hidden, and
# naming their process, so the next restore into that directory removes what
# a SIGKILLed one left (`clean` does not know where files were restored to).
TEMP_FILE_PREFIX = ".casbackup_tmp_"


def _temp_name(prefix: str, index: int, path: str) -> str:
    """``<prefix>_<index>_<name>``, the name cut to fit: a config named near the
    limit must not fail for the ~40 bytes the prefix adds. The index keeps two
    cut names apart; the name is there for a person reading the directory."""
    head = f"{prefix}_{index}_"
    return head + cut_to_bytes(Path(path).name, NAME_MAX - len(head))


def _remove_stale_temporaries(directory: Path) -> None:
    with writing(directory):
        if not directory.is_dir():
            return
        for path in directory.glob(f"{TEMP_FILE_PREFIX}*"):
            owner = name_owner(path.name, TEMP_FILE_PREFIX)
            if owner is not None and not owner.alive() and path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)


def replaced_files(fileset: mf.FileSet, target: Path, *, overwrite: bool) -> list[Path]:
    """Files a restore of ``fileset`` under ``target`` would replace; refused unless ``overwrite``.

    A directory on the way that is a symbolic link is refused whatever
    ``overwrite`` says: writing through it would put the file outside
    ``target`` (a live config.d linked to a shared directory, say).
    """
    with writing(target):
        for f in fileset.files:
            through = _symlinked_directory(target, f.path)
            if through is not None:
                raise FilesConflict(
                    detail=f"{through} is a symbolic link: restoring {f.path} there would write "
                    f"outside {target} (restore into an empty --files-target instead)"
                )
        clashes = [
            target / f.path
            for f in fileset.files
            if (target / f.path).exists() or (target / f.path).is_symlink()
        ]
    if clashes and not overwrite:
        raise FilesConflict(
            detail=f"{len(clashes)} files exist under {target}, e.g. {clashes[0]} "
            "(pass --overwrite to replace them)"
        )
    return clashes


def _symlinked_directory(target: Path, relative: str) -> Path | None:
    """The first directory between ``target`` and ``target/relative``'s file that is a symlink."""
    current = target
    for part in relative.split("/")[:-1]:
        current = current / part
        if current.is_symlink():
            return current
        if not current.exists():
            return None  # made by the restore itself, as a directory
    return None
