"""Settings: a TOML file, environment overrides, command-line overrides; validated, no side effects.

Precedence (highest first): ``--repo``/``--clickhouse`` options, environment
variables (``ENVIRONMENT`` below), the config file, defaults. The config file
is ``--config PATH``, else ``$CASBACKUP_CONFIG``, else ``/etc/casbackup/casbackup.toml``
when running as root, else ``~/.config/casbackup/casbackup.toml``; a default
location that does not exist just means "all defaults".
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from casbackup.errors import ConfigError, UsageError
from casbackup.process import is_utf8
from casbackup.retention import Policy, parse_duration
from casbackup.subset import parse_subset


def duration_seconds(text: str) -> float:
    try:
        return parse_duration(text).total_seconds()
    except UsageError as exc:
        raise ValueError(exc.message) from None


# Environment variable -> (section, key).
ENVIRONMENT: dict[str, tuple[str, str]] = {
    "CASBACKUP_REPO": ("repository", "location"),
    "CASBACKUP_CATALOG": ("catalog", "url"),
    "CASBACKUP_CLICKHOUSE": ("clickhouse", "url"),
    "CASBACKUP_CLICKHOUSE_PASSWORD": ("clickhouse", "password"),
}


def default_config_path() -> Path:
    if os.geteuid() == 0:
        return Path("/etc/casbackup/casbackup.toml")
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "casbackup" / "casbackup.toml"


def default_repository() -> str:
    if os.geteuid() == 0:
        return "/var/lib/casbackup/repo"
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return str(base / "casbackup" / "repo")


def default_state_dir() -> Path:
    """Local state for remote repositories (their catalog cache)."""
    if os.geteuid() == 0:
        return Path("/var/lib/casbackup")
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "casbackup"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RepositorySettings(_Section):
    location: Annotated[str, Field(min_length=1)] = Field(default_factory=default_repository)
    compression_level: Annotated[int, Field(ge=-7, le=22)] = 1
    pack_size_mb: Annotated[int, Field(ge=1, le=512)] = 32
    threads: Annotated[int, Field(ge=1, le=64)] = 2
    upload_threads: Annotated[int, Field(ge=1, le=64)] = 2

    @field_validator("location")
    @classmethod
    def _somewhere(cls, value: str) -> str:
        # " " would be a directory named by a space in the current directory.
        if not value.strip():
            raise ValueError("is blank")
        return value


# sqlite://, sqlite:///:memory: (any driver, any query): a catalog in memory.
_IN_MEMORY_SQLITE = re.compile(r"^sqlite(\+\w+)?://(/(:memory:)?)?(\?.*)?$")


class CatalogSettings(_Section):
    url: str | None = None  # default: sqlite file inside a local repository, or in the state dir

    @field_validator("url")
    @classmethod
    def _kept_after_the_command(cls, value: str | None) -> str | None:
        # SQLAlchemy takes these for a database in memory: every command would
        # start from nothing and re-read every pack and manifest, silently.
        if value is not None and _IN_MEMORY_SQLITE.match(value.strip()):
            raise ValueError(
                "an SQLite catalog needs a file (sqlite:////var/lib/casbackup/catalog.sqlite); "
                "this URL names one in memory, lost when the command ends"
            )
        return value


class ClickHouseSettings(_Section):
    url: str = "clickhouse://default@127.0.0.1:9000"
    password: SecretStr | None = None


class BackupSettings(_Section):
    tables: list[str] = Field(default_factory=lambda: ["*.*"])
    exclude: list[str] = Field(default_factory=list)
    # Tables whose rows live outside parts (Memory, Log, Set ...) that are meant
    # to be backed up as their definition alone: no warning, no exit 1 for them.
    schema_only: list[str] = Field(default_factory=list)
    rbac: bool = False  # access entities as SQL, and the access directory's files
    configs: bool = False  # the server's config directory
    configs_path: Path = Path("/etc/clickhouse-server")
    access_path: Path | None = None  # when system.user_directories does not say
    # Row fingerprints of new parts, for verify --restore; "auto" (the earlier
    # default) now means false (see backup.BackupService.takes_fingerprints).
    fingerprints: bool | Literal["auto"] = False

    @field_validator("tables", "exclude", "schema_only")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if "." not in pattern:
                raise ValueError(
                    f"pattern {pattern!r} must look like database.table (globs allowed)"
                )
        return value


class RetentionSettings(_Section):
    """What `forget` and `run` keep; all zero means `run` keeps every backup."""

    keep_last: Annotated[int, Field(ge=0)] = 0
    keep_hourly: Annotated[int, Field(ge=0)] = 0
    keep_daily: Annotated[int, Field(ge=0)] = 0
    keep_weekly: Annotated[int, Field(ge=0)] = 0
    keep_monthly: Annotated[int, Field(ge=0)] = 0
    keep_yearly: Annotated[int, Field(ge=0)] = 0
    keep_within: str | None = None
    per_host: bool = True  # each host's backups on their own (false: one policy over all)

    @field_validator("keep_within")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            duration_seconds(value)
        return value

    def policy(self) -> Policy:
        return Policy(
            keep_last=self.keep_last,
            keep_hourly=self.keep_hourly,
            keep_daily=self.keep_daily,
            keep_weekly=self.keep_weekly,
            keep_monthly=self.keep_monthly,
            keep_yearly=self.keep_yearly,
            keep_within=parse_duration(self.keep_within) if self.keep_within else None,
            per_host=self.per_host,
        )


class GcConfig(_Section):
    min_age: str = "1h"  # a mark's minimum age before its packs are deleted
    repack_below: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    lease_ttl: str = "15m"  # silence after which another host's lease is presumed dead

    @field_validator("min_age", "lease_ttl")
    @classmethod
    def _duration(cls, value: str) -> str:
        duration_seconds(value)
        return value


class VerifySettings(_Section):
    """What the nightly `run` verifies after gc."""

    read_data_subset: str | None = "5%"  # None: structure only
    restore: bool = False  # also test-restore the new backup (costs its size in scratch space)

    @field_validator("read_data_subset")
    @classmethod
    def _subset(cls, value: str | None) -> str | None:
        if value:  # "" reads every pack, like --read-data without --subset
            parse_subset(value)
        return value


class S3Settings(_Section):
    """How to reach an ``s3://bucket/prefix`` repository; unset keys fall back to boto3's chain.

    Bucket and prefix come from the location. Credentials, region and endpoint
    left unset come from boto3's standard sources (``AWS_ACCESS_KEY_ID``,
    ``AWS_PROFILE``, ``AWS_REGION``, ``AWS_ENDPOINT_URL_S3``, instance roles).
    """

    region: str | None = None
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    addressing_style: Literal["auto", "virtual", "path"] = "auto"
    storage_class: str | None = None
    sse: Literal["none", "AES256", "aws:kms"] = "none"
    sse_kms_key_id: str | None = None
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 10
    retry_mode: Literal["standard", "adaptive"] = "standard"
    connect_timeout: Annotated[float, Field(gt=0)] = 10.0
    read_timeout: Annotated[float, Field(gt=0)] = 120.0
    concurrency: Annotated[int, Field(ge=1, le=64)] = 8
    # S3 parts are 5 MiB to 5 GiB (the last may be smaller).
    multipart_threshold_mb: Annotated[int, Field(ge=5, le=5120)] = 16
    multipart_chunk_mb: Annotated[int, Field(ge=5, le=5120)] = 8
    macros: dict[str, str] = Field(default_factory=dict)

    @field_validator("storage_class")
    @classmethod
    def _readable_class(cls, value: str | None) -> str | None:
        # Archive classes need a restore request before a GET: no restore,
        # verify or dedupe could read them.
        if value is not None and value.upper() in ("GLACIER", "DEEP_ARCHIVE"):
            raise ValueError(f"{value} objects cannot be read without a restore request")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> S3Settings:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set both access_key_id and secret_access_key, or neither")
        if self.sse_kms_key_id is not None and self.sse != "aws:kms":
            raise ValueError('sse_kms_key_id needs sse = "aws:kms"')
        return self


class Settings(_Section):
    repository: RepositorySettings = Field(default_factory=RepositorySettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)
    backup: BackupSettings = Field(default_factory=BackupSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    gc: GcConfig = Field(default_factory=GcConfig)
    verify: VerifySettings = Field(default_factory=VerifySettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    source: str = "defaults"  # where the file part came from, for messages

    @property
    def on_s3(self) -> bool:
        return self.repository.location.startswith("s3://")

    @property
    def upload_threads(self) -> int:
        """Packs uploaded at once: ``[s3] concurrency`` for S3, where latency, not the disk, limits."""
        return self.s3.concurrency if self.on_s3 else self.repository.upload_threads

    def catalog_url(self, repository_id: str) -> str:
        if self.catalog.url:
            return self.catalog.url
        location = self.repository.location
        if "://" not in location or location.startswith("file://"):
            return (
                f"sqlite:///{Path(location.removeprefix('file://')).absolute() / 'catalog.sqlite'}"
            )
        return f"sqlite:///{default_state_dir() / 'catalogs' / (repository_id + '.sqlite')}"


def load_settings(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[tuple[str, str], Any] | None = None,
) -> Settings:
    env = os.environ if environ is None else environ
    # An empty variable means "not set", like every other CASBACKUP_* variable.
    explicit = path is not None or bool(env.get("CASBACKUP_CONFIG"))
    config_path = path or Path(env.get("CASBACKUP_CONFIG") or default_config_path())
    document: dict[str, Any] = {}
    source = "defaults"
    if config_path.exists() or explicit:
        try:
            document = tomllib.loads(config_path.read_text())
        except FileNotFoundError:
            raise ConfigError(detail=f"config file {config_path} does not exist") from None
        except OSError as exc:
            raise ConfigError(detail=f"cannot read {config_path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                detail=f"{config_path}: not UTF-8 text (byte {exc.start}); TOML files are UTF-8"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(detail=f"{config_path}: {exc}") from None
        source = str(config_path)
    from_environment: dict[tuple[str, str], str] = {}
    for variable, (section, key) in ENVIRONMENT.items():
        if env.get(variable):
            _override(document, section, key, _utf8(env[variable], variable), source)
            from_environment[(section, key)] = variable
    for (section, key), value in (overrides or {}).items():
        if value is not None:
            _override(
                document, section, key, _utf8(value, f"{section}.{key} on the command line"), source
            )
            from_environment.pop((section, key), None)
    try:
        return Settings.model_validate({**document, "source": source})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        # pydantic prefixes what a validator's ValueError said with "Value error, ".
        message = err["msg"].removeprefix("Value error, ")
        section_key = tuple(str(p) for p in err["loc"][:2])
        if section_key in from_environment:  # not the file's: name what the operator set
            variable = from_environment[section_key]  # type: ignore[index]
            raise ConfigError(detail=f"{variable} ({where}): {message}") from None
        raise ConfigError(detail=f"{source}: {where}: {message}") from None


def _utf8(value: Any, origin: str) -> Any:
    """``value``, refused if it is a string that is not UTF-8 text.

    Python hands environment variables and arguments over with undecodable
    bytes as lone surrogates; a path or URL holding one got through to the
    first place that encodes it (SQLAlchemy's, at ``init``), as an internal
    error. A TOML file cannot hold one.
    """
    if isinstance(value, str) and not is_utf8(value):
        raise ConfigError(detail=f"{origin} is not UTF-8 text; paths and URLs must be")
    return value


def _override(document: dict[str, Any], section: str, key: str, value: Any, source: str) -> None:
    """Set one key over the file's; the file may have made the section a string or a number."""
    if not isinstance(document.setdefault(section, {}), dict):
        raise ConfigError(detail=f"{source}: [{section}] must be a table")
    document[section][key] = value


DEFAULT_CONFIG = """\
# casbackup configuration (TOML). Every key is optional; shown values are the defaults.
# Location: --config PATH, $CASBACKUP_CONFIG, /etc/casbackup/casbackup.toml (root)
# or $XDG_CONFIG_HOME/casbackup/casbackup.toml (default ~/.config/casbackup/casbackup.toml).
# Environment overrides: CASBACKUP_REPO, CASBACKUP_CATALOG, CASBACKUP_CLICKHOUSE,
# CASBACKUP_CLICKHOUSE_PASSWORD. Command-line --repo/--clickhouse win over all, except
# that a [clickhouse] password (or CASBACKUP_CLICKHOUSE_PASSWORD) wins over one in a URL.

[repository]
# Where backups live: a local directory (or mount), or s3://bucket/prefix.
location = "{location}"
# zstd level per chunk. 1 is ~5x faster than 3 on ClickHouse data for ~1% less saving.
compression_level = 1
# Target size of pack files, in MB. Bigger means fewer objects, smaller
# means finer garbage collection.
pack_size_mb = 32
# Threads reading and hashing files, and uploading packs (to S3: [s3] concurrency).
threads = 2
upload_threads = 2

[catalog]
# SQLAlchemy URL of the catalog (an index of the repository; rebuildable from it
# with `casbackup catalog rebuild`). Default: catalog.sqlite inside a local
# repository, or {catalogs}/<repository id>.sqlite for remote ones.
# url = "sqlite:////var/lib/casbackup/catalog.sqlite"

[clickhouse]
# clickhouse://user[:password]@host:port/?secure=false for a server on this host
# (casbackup must run where the server's data directory is), or chdb:///path
# for the embedded engine.
url = "clickhouse://default@127.0.0.1:9000"
# password = ""   # prefer CASBACKUP_CLICKHOUSE_PASSWORD; never printed

[backup]
# Which tables `create` backs up: database.table glob patterns.
tables = ["*.*"]
exclude = []
# Tables whose rows live outside parts (Memory, Log, Set, Join, File ...) are
# backed up as their definition alone, with a warning (exit 1); list here
# those that are meant to be, and they get a note instead.
schema_only = []
# Also back up access control (users, roles, quotas, row policies, settings
# profiles, grants; captured as SQL, plus the access directory's files) and
# the server's config directory. SQL functions and named collections are
# always backed up. `create --rbac/--configs` do the same for one run.
rbac = false
configs = false
configs_path = "/etc/clickhouse-server"
# access_path = "/var/lib/clickhouse/access"   # default: from system.user_directories
# Row fingerprints of parts new to the repository (count and sum of row
# hashes), which `verify --restore` compares after a test restore, on top of
# its own check of every restored file against the part's checksums.txt. The
# server reads every new part once for them: a third to a half of a full
# backup's time, nothing on an unchanged night. "auto" (the earlier default)
# means false.
fingerprints = false

[retention]
# What `forget` and the nightly `run` keep (like restic's forget). All zero:
# `run` keeps everything. keep_within is relative to the newest backup.
keep_last = 0
keep_hourly = 0
keep_daily = 0
keep_weekly = 0
keep_monthly = 0
keep_yearly = 0
# keep_within = "7d"
# The rules apply to each host's backups apart (the host a backup's
# manifest names), so hosts sharing a repository never expire each other's
# backups; false applies them to every backup as one set.
per_host = true

[gc]
# A pack is deleted in the second gc run after it became garbage, once its
# mark is at least min_age old and every backup running at marking time ended.
min_age = "1h"
# Packs whose live bytes are below this fraction are rewritten (repacked).
repack_below = 0.5
# A lease of another host that has not been refreshed for this long is dead.
lease_ttl = "15m"

[verify]
# After gc, `run` checks the repository's structure and reads this share of
# the packs (a window that moves every day: 5% covers everything in 20 runs).
read_data_subset = "5%"
# Also test-restore the night's backup into scratch databases, every file checked
# against its part's checksums.txt (and fingerprints, if [backup] fingerprints took
# them); needs the backup's size free on the ClickHouse disk.
restore = false

[s3]
# For repository.location = "s3://bucket/prefix". The prefix may use {{shard}},
# {{replica}}, {{host}} (and any other macro): values from [s3.macros] below, else
# the ClickHouse server's system.macros; {{host}} defaults to this hostname.
# Unset keys fall back to boto3's standard environment and files:
# AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_REGION,
# AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, instance and container roles.
# region = "eu-central-1"
# endpoint_url = "https://minio.example.net:9000"   # S3-compatible servers
# access_key_id = ""
# secret_access_key = ""   # prefer the environment; never printed
# "auto", "virtual" (bucket.host) or "path" (host/bucket, most S3-compatible servers).
addressing_style = "auto"
# storage_class = "STANDARD_IA"   # archive classes (GLACIER, DEEP_ARCHIVE) cannot be read back
# Server-side encryption: "none", "AES256" or "aws:kms" (with sse_kms_key_id).
sse = "none"
# sse_kms_key_id = "arn:aws:kms:..."
# Attempts per request (the first included) on throttling, 5xx and broken
# connections, with backoff; "adaptive" also slows down the client on throttling.
max_attempts = 10
retry_mode = "standard"
connect_timeout = 10.0
read_timeout = 120.0
# Threads uploading packs, and parts of multipart uploads in flight at once.
concurrency = 8
# Objects from this size up are uploaded in parts of multipart_chunk_mb, in parallel.
multipart_threshold_mb = 16
multipart_chunk_mb = 8

[s3.macros]
# shard = "01"
# replica = "replica-1"
"""


def render_default_config() -> str:
    return DEFAULT_CONFIG.format(
        location=default_repository(), catalogs=default_state_dir() / "catalogs"
    )
