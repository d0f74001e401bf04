"""The whole cycle through the CLI with the repository on S3 (moto over HTTP), on real ClickHouse.

No config file: credentials, region and endpoint come from boto3's standard
environment (AWS_ACCESS_KEY_ID…, AWS_ENDPOINT_URL_S3), as in a script.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

import casbackup.config
from casbackup.errors import ExitCode
from tests.cli.test_incremental import create_table, fill
from tests.clickhouse.schema import fingerprints, q
from tests.engines import Engine
from tests.s3server import S3Server, use_test_credentials


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where a remote repository's catalog goes by default (/var/lib/casbackup as root)."""
    state = tmp_path / "state"
    monkeypatch.setattr(casbackup.config, "default_state_dir", lambda: state)
    return state


@pytest.fixture
def s3_env(s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """boto3's environment pointed at the test server; returns the bucket."""
    use_test_credentials(monkeypatch, endpoint=s3_server.endpoint)
    return s3_bucket


def pack_bytes(server: S3Server, bucket: str, prefix: str) -> int:
    """Bytes of the repository's packs, measured by listing the bucket itself."""
    return sum(server.keys(bucket, f"{prefix}/packs/").values())


def test_backup_restore_gc_verify_cycle_on_s3(
    engine: Engine,
    dbname: str,
    cli: Any,
    s3_server: S3Server,
    s3_env: str,
    state_dir: Path,
) -> None:
    bucket, prefix = s3_env, "clickhouse/cycle"
    repo = f"s3://{bucket}/{prefix}"
    create_table(engine, dbname)
    fill(engine, dbname, rows=300_000)
    monday = fingerprints(engine, [dbname])

    init = cli(engine, "init", repo=repo)
    assert init.code == 0, init.stderr
    assert f"at s3://{bucket}/{prefix} at 127.0.0.1:{s3_server.port}" in init.stdout
    # The catalog of a remote repository is a local file in the state directory.
    assert len(list((state_dir / "catalogs").glob("*.sqlite"))) == 1

    first = cli(engine, "create", "mon", "--tables", f"{dbname}.*", "--json", repo=repo)
    assert first.code == 0, first.stderr
    assert first.json()["new_bytes"] > 0
    again = cli(engine, "create", "mon-again", "--tables", f"{dbname}.*", "--json", repo=repo)
    assert again.code == 0, again.stderr
    assert again.json()["new_bytes"] == 0 and again.json()["new_chunks"] == 0
    listed = cli(engine, "list", "--json", repo=repo).json()
    assert [b["name"] for b in listed] == ["mon", "mon-again"]
    keys = s3_server.keys(bucket)
    assert f"{prefix}/config" in keys and f"{prefix}/manifests/mon" in keys
    assert all(key.startswith(prefix + "/") for key in keys)

    restored_db = f"{dbname}_restored"
    restored = cli(engine, "restore", "mon", "--as", f"{dbname}:{restored_db}", repo=repo)
    assert restored.code == 0, restored.stderr
    assert fingerprints(engine, [restored_db]) == {
        key.replace(f"{dbname}.", f"{restored_db}.", 1): value for key, value in monday.items()
    }
    engine.sql(f"DROP DATABASE {q(restored_db)}")

    engine.sql(f"TRUNCATE TABLE {q(dbname)}.events")
    fill(engine, dbname, rows=200_000)  # different content
    assert cli(engine, "create", "tue", "--tables", f"{dbname}.*", repo=repo).code == 0
    tuesday = fingerprints(engine, [dbname])

    assert cli(engine, "delete", "mon", "mon-again", repo=repo).code == 0
    full = pack_bytes(s3_server, bucket, prefix)
    gc1 = cli(engine, "gc", "--min-age", "0s", "--json", repo=repo)
    assert gc1.code == 0, gc1.stderr
    condemned = gc1.json()
    assert condemned["packs_condemned"] > 0 and condemned["bytes_freed"] == 0
    # The first run only marks (and may repack): nothing is deleted yet.
    marked = pack_bytes(s3_server, bucket, prefix)
    assert marked == full + condemned["repack_bytes_written"]
    gc2 = cli(engine, "gc", "--min-age", "0s", "--json", repo=repo)
    assert gc2.code == 0, gc2.stderr
    freed = gc2.json()["bytes_freed"]
    assert freed > 0
    assert pack_bytes(s3_server, bucket, prefix) == marked - freed < full

    for args in (["--read-data"], ["--restore"]):
        verified = cli(engine, "verify", *args, "--json", repo=repo)
        assert verified.code == 0, verified.stderr
        assert verified.json()["ok"] and verified.json()["problems"] == []

    engine.sql(f"DROP DATABASE {q(dbname)}")
    assert cli(engine, "restore", "tue", repo=repo).code == 0
    assert fingerprints(engine, [dbname]) == tuesday


def test_prefix_macros_from_config_and_commands_without_clickhouse(
    engine: Engine,
    dbname: str,
    cli: Any,
    s3_server: S3Server,
    s3_env: str,
    state_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """{shard} from [s3.macros], {host} from the hostname; settings from the file."""
    bucket = s3_env
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    config = tmp_path / "casbackup.toml"
    config.write_text(
        f'[repository]\nlocation = "s3://{bucket}/ch/{{shard}}/{{host}}"\n'
        f'[s3]\nendpoint_url = "{s3_server.endpoint}"\naddressing_style = "path"\n'
        'access_key_id = "config-key"\nsecret_access_key = "config-secret-never-shown"\n'
        "concurrency = 3\nmax_attempts = 4\n"
        '[s3.macros]\nshard = "07"\n'
    )
    monkeypatch.setenv("CASBACKUP_CONFIG", str(config))
    prefix = f"ch/07/{socket.gethostname()}"
    create_table(engine, dbname)
    fill(engine, dbname, rows=10_000)
    location = f"s3://{bucket}/ch/{{shard}}/{{host}}"
    init = cli(engine, "init", repo=location)
    assert init.code == 0, init.stderr
    assert f"s3://{bucket}/{prefix} at" in init.stdout
    created = cli(engine, "create", "b1", "--tables", f"{dbname}.*", "--json", repo=location)
    assert created.code == 0, created.stderr
    assert "config-secret-never-shown" not in created.stdout + created.stderr
    assert f"{prefix}/manifests/b1" in s3_server.keys(bucket)
    # Every macro known without the server: `list` needs no ClickHouse (none listens there).
    listed = cli(
        None, "--clickhouse", "clickhouse://default@127.0.0.1:1", "list", "--json", repo=location
    )
    assert listed.code == 0, listed.stderr
    assert [b["name"] for b in listed.json()] == ["b1"]


def test_macro_nobody_defines_is_a_config_error(
    engine: Engine, cli: Any, s3_env: str, state_dir: Path
) -> None:
    """The test servers define no macros: {replica} is asked of ClickHouse and not found."""
    result = cli(engine, "list", repo=f"s3://{s3_env}/ch/{{replica}}")
    assert result.code == ExitCode.CONFIG
    assert result.stderr.strip() == (
        f"casbackup: error: configuration error: repository location 's3://{s3_env}/ch/{{replica}}' "
        "uses {replica}, which neither [s3] macros nor the ClickHouse server's system.macros define"
    )
    unreachable = cli(
        None,
        "--clickhouse",
        "clickhouse://default@127.0.0.1:1",
        "list",
        repo=f"s3://{s3_env}/{{shard}}",
    )
    # ClickHouse down is the server's state, not a configuration error (exit 11, not 10).
    assert unreachable.code == ExitCode.CLICKHOUSE_CONNECT
    assert "cannot reach ClickHouse" in unreachable.stderr


def test_missing_bucket_through_the_cli(cli: Any, s3_env: str, state_dir: Path) -> None:
    result = cli(None, "init", repo="s3://no-such-bucket/x")
    assert result.code == ExitCode.STORE
    assert result.stderr.strip().startswith(
        "casbackup: error: object store error: bucket 'no-such-bucket' does not exist at 127.0.0.1:"
    )


def test_clean_aborts_uploads_a_killed_backup_left(
    engine: Engine, cli: Any, s3_server: S3Server, s3_env: str, state_dir: Path
) -> None:
    """A pack upload killed mid-way leaves parts S3 bills for; `clean` aborts them."""
    location = f"s3://{s3_env}/repo"
    assert cli(engine, "init", repo=location).code == 0
    client = s3_server.client()
    client.create_multipart_upload(Bucket=s3_env, Key="repo/packs/ab/killed-upload")
    client.create_multipart_upload(Bucket=s3_env, Key="other-tool/keep")
    cleaned = cli(engine, "clean", "--json", repo=location)
    assert cleaned.code == 0, cleaned.stderr
    assert cleaned.json()["store_temporaries"] == 1
    left = client.list_multipart_uploads(Bucket=s3_env).get("Uploads", [])
    assert [upload["Key"] for upload in left] == ["other-tool/keep"]


def test_an_endpoint_without_a_scheme_is_a_configuration_error(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_test_credentials(monkeypatch)
    config = tmp_path / "casbackup.toml"
    config.write_text('[s3]\nendpoint_url = "127.0.0.1:19420"\n')
    result = cli(None, "--config", str(config), "init", repo="s3://bucket/prefix")
    assert result.code == ExitCode.CONFIG, result.stderr
    assert result.stderr.count("\n") == 1 and "[s3] endpoint_url" in result.stderr


def test_verbose_logs_never_carry_aws_credentials(
    cli: Any,
    s3_env: str,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """botocore's debug lines hold the session token of every request (and STS secrets)."""
    import logging

    monkeypatch.setenv("AWS_SESSION_TOKEN", "SessionTokenSECRET123")
    caplog.set_level(logging.DEBUG)
    repo = f"s3://{s3_env}/verbose"
    assert cli(None, "init", repo=repo).code == 0
    listed = cli(None, "-vv", "list", repo=repo)
    assert listed.code == 0, listed.stderr
    assert caplog.records  # -vv did log
    assert "SessionTokenSECRET123" not in caplog.text + listed.stderr + listed.stdout


@pytest.mark.parametrize("location", ["s3:/bucket/prefix", "s3:bucket/prefix", "S3:/bucket"])
def test_a_mistyped_s3_location_is_not_a_local_directory(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, location: str
) -> None:
    """`s3:/bucket/prefix` (one slash) once made a local repository under ./s3:/ and said so.

    A nightly job with that typo backs up to the ClickHouse host's own disk
    while its operator believes the backups are in S3.
    """
    monkeypatch.chdir(tmp_path)
    result = cli(None, "init", repo=location)
    assert result.code == ExitCode.CONFIG, result.stdout
    assert result.stderr.count("\n") == 1 and "s3://bucket/prefix" in result.stderr
    assert not any(tmp_path.iterdir())
    # A directory whose name starts that way is still reachable as a path.
    assert cli(None, "init", repo=f"./{location}").code == 0


def test_clean_dry_run_counts_the_uploads_clean_would_abort(
    cli: Any, s3_server: S3Server, s3_env: str, state_dir: Path
) -> None:
    """`clean --dry-run` said "nothing to clean" where `clean` then aborted uploads."""
    location = f"s3://{s3_env}/dry"
    assert cli(None, "init", repo=location).code == 0
    client = s3_server.client()
    client.create_multipart_upload(Bucket=s3_env, Key="dry/packs/ab/killed-upload")
    nowhere = ("--clickhouse", "clickhouse://default@127.0.0.1:1")  # ClickHouse is not the point
    dry = cli(None, *nowhere, "clean", "--dry-run", "--json", repo=location)
    assert dry.code == ExitCode.WARNING, dry.stderr
    assert dry.json()["store_temporaries"] == 1
    assert len(client.list_multipart_uploads(Bucket=s3_env).get("Uploads", [])) == 1
    text = cli(None, *nowhere, "clean", "--dry-run", repo=location)
    assert "would remove 1 temporary files in the store" in text.stdout
    cleaned = cli(None, *nowhere, "clean", "--json", repo=location)
    assert cleaned.json()["store_temporaries"] == 1
    assert client.list_multipart_uploads(Bucket=s3_env).get("Uploads", []) == []
