"""The S3 store against a real S3-compatible server (moto, over HTTP on loopback)."""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3
from pydantic import ValidationError

from casbackup.catalog import Catalog
from casbackup.catalog.backups import out_of_step
from casbackup.config import S3Settings, load_settings
from casbackup.errors import (
    ConfigError,
    ExitCode,
    ObjectExists,
    ObjectNotFound,
    StoreError,
    StorePermissionDenied,
)
from casbackup.repo import keys
from casbackup.repo.locks import Lock
from casbackup.repo.repository import Repository
from casbackup.store import expand_macros, open_store, parse_s3_location, s3_options
from casbackup.store.s3 import MiB, S3Store
from tests.engines import free_port
from tests.faultproxy import KINDS, FaultPlan, FaultProxy
from tests.helpers import restore_manifest, snapshot_directory, write_tree
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server, start_s3_server, use_test_credentials
from tests.store.conformance import StoreConformance


class TestS3StoreConformance(StoreConformance):
    @pytest.fixture
    def store(self, s3_server: S3Server, s3_bucket: str) -> S3Store:
        return s3_server.store(s3_bucket, "repo/one")


class TestS3StoreAtBucketRootConformance(StoreConformance):
    """No prefix: keys are the bucket's keys."""

    @pytest.fixture
    def store(self, s3_server: S3Server, s3_bucket: str) -> S3Store:
        return s3_server.store(s3_bucket)


def test_keys_live_under_the_prefix(s3_server: S3Server, s3_bucket: str) -> None:
    store = s3_server.store(s3_bucket, "clickhouse/shard-01")
    store.put("packs/ab/x", b"123")
    assert s3_server.keys(s3_bucket) == {"clickhouse/shard-01/packs/ab/x": 3}
    assert [(i.key, i.size) for i in store.list("")] == [("packs/ab/x", 3)]


def test_prefixes_isolate_stores_in_one_bucket(s3_server: S3Server, s3_bucket: str) -> None:
    one = s3_server.store(s3_bucket, "ch/shard1")
    two = s3_server.store(s3_bucket, "ch/shard10")  # shard1 is a string prefix of shard10
    one.put("config", b"one")
    two.put("config", b"two")
    two.put("packs/aa/y", b"2")
    assert [i.key for i in one.list("")] == ["config"]
    assert [i.key for i in two.list("")] == ["config", "packs/aa/y"]
    assert one.get("config") == b"one"
    with pytest.raises(ObjectNotFound):
        one.get("packs/aa/y")
    one.delete("packs/aa/y")  # not its object: nothing happens to the other store's
    assert two.get("packs/aa/y") == b"2"


def test_foreign_objects_under_the_prefix_are_not_listed(
    s3_server: S3Server, s3_bucket: str
) -> None:
    store = s3_server.store(s3_bucket, "repo")
    store.put("packs/aa/x", b"1")
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="repo/packs/", Body=b"")  # a console "folder"
    client.put_object(Bucket=s3_bucket, Key="repo/packs/aa/with space", Body=b"?")
    assert [i.key for i in store.list("packs/")] == ["packs/aa/x"]


def test_large_objects_go_up_in_parts(s3_server: S3Server, s3_bucket: str) -> None:
    store = s3_server.store(s3_bucket, "mp", multipart_threshold=6 * MiB, multipart_chunk=5 * MiB)
    big = bytes(range(256)) * (12 * MiB // 256) + b"tail"
    small = b"s" * (6 * MiB - 1)
    store.put("big", big)
    store.put("small", small)
    client = s3_server.client()
    # S3 names a multipart object by the digest of its parts' digests, "-<parts>".
    assert client.head_object(Bucket=s3_bucket, Key="mp/big")["ETag"].endswith('-3"')
    assert "-" not in client.head_object(Bucket=s3_bucket, Key="mp/small")["ETag"]
    assert store.get("big") == big
    assert store.get("big", 5 * MiB - 10, 20) == big[5 * MiB - 10 : 5 * MiB + 10]
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_storage_class_and_encryption_are_sent(s3_server: S3Server, s3_bucket: str) -> None:
    store = s3_server.store(s3_bucket, "c", storage_class="STANDARD_IA", sse="AES256")
    store.put("small", b"1")
    store.put("big", b"2" * (17 * MiB))
    store.create("lock", b"3")
    client = s3_server.client()
    for key in ("c/small", "c/big", "c/lock"):
        head = client.head_object(Bucket=s3_bucket, Key=key)
        assert head["StorageClass"] == "STANDARD_IA"
        assert head["ServerSideEncryption"] == "AES256"


def test_abort_stale_uploads(s3_server: S3Server, s3_bucket: str) -> None:
    store = s3_server.store(s3_bucket, "repo")
    client = s3_server.client()
    client.create_multipart_upload(Bucket=s3_bucket, Key="repo/packs/aa/killed")
    client.create_multipart_upload(Bucket=s3_bucket, Key="elsewhere/x")  # not under the prefix
    # moto dates every upload 2010-11-10, so "too young" is a cutoff before that.
    assert store.abort_stale_uploads(older_than_seconds=100 * 365 * 86400) == 0
    assert store.abort_stale_uploads(older_than_seconds=3600) == 1
    left = client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert [u["Key"] for u in left] == ["elsewhere/x"]


def test_describe_names_bucket_prefix_and_endpoint_never_credentials(
    s3_server: S3Server, s3_bucket: str
) -> None:
    store = s3_server.store(s3_bucket, "a/b")
    text = store.describe()
    assert text == f"s3://{s3_bucket}/a/b at 127.0.0.1:{s3_server.port}"
    for secret in (ACCESS_KEY, SECRET_KEY):
        assert secret not in text
        assert secret not in repr(store.options)


def test_missing_bucket_is_a_clear_error(s3_server: S3Server, s3_bucket: str) -> None:
    store = s3_server.store("no-such-bucket-here", "x")
    for attempt in (
        lambda: store.put("k", b"1"),
        lambda: store.get("k"),
        lambda: list(store.list()),
    ):
        with pytest.raises(StoreError) as caught:
            attempt()
        assert caught.value.message == (
            "object store error: bucket 'no-such-bucket-here' does not exist "
            f"at 127.0.0.1:{s3_server.port}"
        )


def test_unreachable_endpoint_is_a_clear_error(s3_server: S3Server, s3_bucket: str) -> None:
    store = s3_server.store(
        s3_bucket, "x", endpoint=f"http://127.0.0.1:{free_port()}", max_attempts=2
    )
    with pytest.raises(StoreError) as caught:
        store.put("packs/aa/k", b"1")
    message = caught.value.message
    assert message.startswith("object store error: cannot reach S3 endpoint 127.0.0.1:")
    assert "Connection refused" in message and "after 2 attempts" in message
    assert "\n" not in message and SECRET_KEY not in message
    # The errno's text alone: it ran on into botocore's own ("... refused Could not connect
    # to the endpoint URL:, after 2 attempts").
    assert message.endswith("[Errno 111] Connection refused, after 2 attempts)"), message


def test_no_credentials_anywhere_is_a_config_error(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = s3_server.store(s3_bucket, "x", access_key_id=None, secret_access_key=None)
    with pytest.raises(ConfigError, match="no S3 credentials found"):
        store.put("k", b"1")


@pytest.fixture(scope="module")
def s3_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A second server that checks signatures; its first 4 requests set up a bucket and a user."""
    yield from start_s3_server(tmp_path_factory.mktemp("s3-auth"), auth=True, free_actions=4)


@pytest.fixture(scope="module")
def limited_user(s3_auth_server: S3Server) -> tuple[str, str, str]:
    """A bucket and an IAM user allowed only to read it: (bucket, access key, secret key)."""
    import boto3

    bucket = "casbackup-auth"
    s3_auth_server.client().create_bucket(Bucket=bucket)
    iam = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name="us-east-1"
    ).client("iam", endpoint_url=s3_auth_server.endpoint)
    iam.create_user(UserName="reader")
    iam.put_user_policy(
        UserName="reader",
        PolicyName="read-only",
        PolicyDocument='{"Version": "2012-10-17", "Statement": [{"Effect": "Allow",'
        ' "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}]}',
    )
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    return bucket, key["AccessKeyId"], key["SecretAccessKey"]


def test_wrong_credentials_are_permission_denied(
    s3_auth_server: S3Server, limited_user: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_test_credentials(monkeypatch)
    bucket, access_key, _ = limited_user
    wrong = "wrong-secret-must-not-show"
    store = s3_auth_server.store(bucket, "r", access_key_id=access_key, secret_access_key=wrong)
    with pytest.raises(StorePermissionDenied) as caught:
        store.put("config", b"x")
    message = caught.value.message
    assert "SignatureDoesNotMatch" in message and f"s3://{bucket}/r/config" in message
    assert wrong not in message and "\n" not in message
    unknown = s3_auth_server.store(
        bucket, "r", access_key_id="AKIANOSUCHKEY0000000", secret_access_key=wrong
    )
    with pytest.raises(StorePermissionDenied) as caught:
        unknown.get("config")
    assert "InvalidAccessKeyId" in caught.value.message
    assert wrong not in caught.value.message and "AKIANOSUCHKEY0000000" not in caught.value.message


def test_access_denied_is_permission_denied(
    s3_auth_server: S3Server, limited_user: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_test_credentials(monkeypatch)
    bucket, access_key, secret_key = limited_user
    store = s3_auth_server.store(
        bucket, "r", access_key_id=access_key, secret_access_key=secret_key
    )
    assert list(store.list("")) == []  # allowed
    with pytest.raises(StorePermissionDenied) as caught:
        store.put("config", b"x")
    assert "AccessDenied" in caught.value.message
    assert secret_key not in caught.value.message


# --- locations, macros and settings ----------------------------------------------


@pytest.mark.parametrize(
    "settings, environment, named",
    [
        ({"endpoint_url": "127.0.0.1:19420"}, {}, "[s3] endpoint_url"),
        ({"endpoint_url": "http://"}, {}, "[s3] endpoint_url"),
        # Empty, and a valid one in the environment: the config's is the one refused.
        ({"endpoint_url": ""}, {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:1"}, "[s3] endpoint_url"),
        ({"endpoint_url": f"http://{ACCESS_KEY}:{SECRET_KEY}@"}, {}, "[s3] endpoint_url"),
        ({}, {"AWS_ENDPOINT_URL_S3": "127.0.0.1:19420"}, "AWS_ENDPOINT_URL_S3"),
        ({}, {"AWS_ENDPOINT_URL": "http://"}, "AWS_ENDPOINT_URL"),
        ({"region": "us east 1"}, {}, "[s3] region"),
        ({}, {"AWS_PROFILE": "nosuchprofile"}, "AWS_PROFILE"),
    ],
)
def test_settings_botocore_refuses_are_configuration_errors(
    monkeypatch: pytest.MonkeyPatch,
    settings: dict[str, str],
    environment: dict[str, str],
    named: str,
) -> None:
    """botocore checks these only when the client is built, with exceptions of its own."""
    use_test_credentials(monkeypatch)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        open_store("s3://bucket/prefix", s3=S3Settings.model_validate(settings))
    message = caught.value.message
    assert named in message and "\n" not in message
    assert ACCESS_KEY not in message and SECRET_KEY not in message


def test_parse_s3_location() -> None:
    assert parse_s3_location("s3://bucket") == ("bucket", "")
    assert parse_s3_location("s3://bucket/") == ("bucket", "")
    assert parse_s3_location("s3://bucket/a/b/") == ("bucket", "a/b")
    for bad in ("s3://", "s3:///prefix", "s3://bucket/a//b", "s3://bucket/a b", "s3://b/../x"):
        with pytest.raises(ConfigError):
            parse_s3_location(bad)


def test_macros_from_config_then_server_then_hostname() -> None:
    asked: list[bool] = []

    def server() -> dict[str, str]:
        asked.append(True)
        return {"shard": "02", "replica": "from-server", "cluster": "main"}

    location = "s3://b/ch/{cluster}/{shard}/{replica}/{host}"
    assert expand_macros(location, {"replica": "r1"}, server) == (
        f"s3://b/ch/main/02/r1/{socket.gethostname()}"
    )
    assert asked == [True]
    # Everything known without the server: it is not asked.
    assert expand_macros("s3://b/{shard}/{host}", {"shard": "7", "host": "h"}, server) == (
        "s3://b/7/h"
    )
    assert expand_macros("s3://b/{host}", {}, server) == f"s3://b/{socket.gethostname()}"
    assert expand_macros("s3://b/plain", {}, server) == "s3://b/plain"
    assert asked == [True]


def test_unresolvable_macro_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"\{shard\}"):
        expand_macros("s3://b/{shard}", {}, lambda: {"replica": "r"})
    with pytest.raises(ConfigError, match=r"\{shard\}"):
        expand_macros("s3://b/{shard}", {}, None)
    with pytest.raises(ConfigError, match="not a valid part"):
        expand_macros("s3://b/{shard}", {"shard": "a b"}, None)


def test_open_store_resolves_macros_and_settings(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    settings = S3Settings(macros={"shard": "03"}, concurrency=3, max_attempts=4)
    store = open_store(
        f"s3://{s3_bucket}/ch/{{shard}}/{{replica}}",
        s3=settings,
        server_macros=lambda: {"replica": "r2"},
    )
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == (s3_bucket, "ch/03/r2")
    assert (store.options.concurrency, store.options.max_attempts) == (3, 4)
    store.put("config", b"c")
    assert s3_server.keys(s3_bucket) == {"ch/03/r2/config": 1}


def test_s3_settings_and_upload_threads() -> None:
    local = load_settings(environ={"CASBACKUP_REPO": "/var/backups/ch"})
    remote = load_settings(environ={"CASBACKUP_REPO": "s3://b/p"})
    assert local.upload_threads == local.repository.upload_threads == 2
    assert remote.upload_threads == remote.s3.concurrency == 8
    options = s3_options(S3Settings(secret_access_key="s3cr3t", access_key_id="k", sse="none"))
    assert options.sse is None and options.multipart_threshold == 16 * MiB
    assert "secret_access_key" not in repr(options)
    for bad in (
        {"access_key_id": "only-half"},
        {"sse": "AES256", "sse_kms_key_id": "k"},
        {"storage_class": "GLACIER"},
        {"addressing_style": "sideways"},
        {"multipart_chunk_mb": 1},
    ):
        with pytest.raises(ValidationError):
            S3Settings.model_validate(bad)


def test_environment_alone_reaches_the_server(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No config at all: credentials, region and endpoint from boto3's standard variables."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    store = open_store(f"s3://{s3_bucket}/env")
    store.put("k", b"v")
    assert s3_server.keys(s3_bucket) == {"env/k": 1}
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    assert open_store(f"s3://{s3_bucket}/env").get("k") == b"v"


# --- faults: a proxy between the store and the server (tests/faultproxy.py) ------------


def make_tree(root: Path, seed: int) -> dict[str, bytes]:
    """Parts with tiny metadata files and a few MB of incompressible and compressible data."""
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    for part in range(4):
        name = f"2024{part:02d}_{part}_{part}_0"
        files[f"{name}/count.txt"] = str(rng.randint(1, 10**6)).encode()
        files[f"{name}/checksums.txt"] = rng.randbytes(300)
        files[f"{name}/value.bin"] = rng.randbytes(rng.randint(1_000_000, 2_500_000))
        files[f"{name}/text.bin"] = b"".join(
            b"event %d user %d\n" % (i, rng.randint(0, 999)) for i in range(60_000)
        )
        files[f"{name}/empty.bin"] = b""
    write_tree(root, files)
    return files


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.port) as running:
        yield running


def test_backup_and_restore_complete_through_faults(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """One request in five fails (500, 503 SlowDown, dropped before or after, truncated body)."""
    first = make_tree(tmp_path / "src", seed=1)
    proxy.set_plan(FaultPlan(rate=0.2, seed=7))
    # Packs above the multipart threshold, so parts and completions meet faults too.
    store = s3_server.store(
        s3_bucket,
        "faulty",
        endpoint=proxy.endpoint,
        multipart_threshold=5 * MiB,
        multipart_chunk=5 * MiB,
    )
    repo = Repository.init(store)
    with Catalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite'}", repo.id) as catalog:
        manifest = snapshot_directory(repo, catalog, "b1", tmp_path / "src", pack_size=6 * MiB)
        # Then many small packs (single PUTs) for new content, and the same again (no upload).
        second = make_tree(tmp_path / "src", seed=2)
        snapshot_directory(repo, catalog, "b2", tmp_path / "src", pack_size=MiB // 2)
        again = snapshot_directory(repo, catalog, "b3", tmp_path / "src")
        assert again.stats.new_chunks == 0
        assert restore_manifest(repo, catalog, repo.read_manifest("b1"), tmp_path / "out1") == first
        assert (
            restore_manifest(repo, catalog, repo.read_manifest("b2"), tmp_path / "out2") == second
        )
        assert not out_of_step(catalog.backups.committed_stamps(), repo.list_backups())
    assert manifest.stats.logical_bytes == sum(map(len, first.values()))
    assert set(proxy.log.faults) == set(KINDS), proxy.log.faults
    assert sum(proxy.log.faults.values()) >= 10
    # What the server holds is exactly what a clean read sees: every pack whole.
    clean = Repository.open(s3_server.store(s3_bucket, "faulty"))
    for pack_id, size in clean.list_packs():
        assert blake3(clean.store.get(keys.pack_key(pack_id))).digest() == pack_id
        assert size > 0


def test_truncated_reads_are_retried(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy
) -> None:
    store = s3_server.store(s3_bucket, "t", endpoint=proxy.endpoint)
    data = random.Random(3).randbytes(3 * MiB)
    store.put("obj", data)
    proxy.set_plan(FaultPlan(rate=0.5, kinds=("truncate",), methods=("GET",), seed=2))
    for offset, length in [(0, None), (5, 1_000_000), (3 * MiB - 10, 100), (100, None)]:
        end = None if length is None else offset + length
        assert store.get("obj", offset, length) == data[offset:end]
    assert proxy.log.faults["truncate"] >= 2


def test_always_truncated_reads_fail_clearly(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy
) -> None:
    store = s3_server.store(s3_bucket, "t", endpoint=proxy.endpoint, max_attempts=3)
    store.put("obj", b"x" * 100_000)
    proxy.set_plan(FaultPlan(rate=1.0, kinds=("truncate",), methods=("GET",)))
    with pytest.raises(StoreError) as caught:
        store.get("obj")
    assert caught.value.message.startswith(
        f"object store error: GET s3://{s3_bucket}/t/obj: response body broken on all 3 attempts"
    )


def test_create_whose_response_was_lost_is_still_ours(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy
) -> None:
    """The first PUT lands, its response is lost, botocore repeats it and meets a 412."""
    store = s3_server.store(s3_bucket, "c", endpoint=proxy.endpoint)
    proxy.set_plan(FaultPlan(rate=1.0, kinds=("drop_after",), methods=("PUT",)))
    forwarded = threading.Event()
    original = proxy.record

    def once(method: str, path: str, status: int) -> None:
        original(method, path, status)
        if method == "PUT" and not forwarded.is_set():
            forwarded.set()
            proxy.set_plan(FaultPlan())  # only the first response is lost

    proxy.record = once  # type: ignore[method-assign]
    store.create("locks/exclusive-gc", b"mine")
    assert [f.status for f in proxy.log.forwarded if f.method == "PUT"] == [200, 412]
    assert store.get("locks/exclusive-gc") == b"mine"
    with pytest.raises(ObjectExists):
        store.create("locks/exclusive-gc", b"someone else")


def test_permanently_failing_store_fails_clearly_and_damages_nothing(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    expected = make_tree(tmp_path / "src", seed=2)
    store = s3_server.store(s3_bucket, "perm", endpoint=proxy.endpoint, max_attempts=3)
    repo = Repository.init(store)
    with Catalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite'}", repo.id) as catalog:
        snapshot_directory(repo, catalog, "good", tmp_path / "src")
        make_tree(tmp_path / "src", seed=3)  # new content: the next backup must upload
        # Every pack upload fails, whatever the retries (the lease still works).
        proxy.set_plan(FaultPlan(rate=1.0, kinds=("500",), path_marker="/packs/"))
        with pytest.raises(StoreError) as caught:
            snapshot_directory(repo, catalog, "doomed", tmp_path / "src")
        message = caught.value.message
        assert message.startswith(f"object store error: PUT s3://{s3_bucket}/perm/packs/")
        assert message.endswith(
            ": InternalError: We encountered an internal error. Please try again. (after 3 attempts)"
        )
        # Every request fails: the first one (looking for the manifest) says so.
        proxy.set_plan(FaultPlan(permanent=True))
        with pytest.raises(StoreError) as caught:
            snapshot_directory(repo, catalog, "doomed", tmp_path / "src")
        assert caught.value.message == (
            f"object store error: HEAD s3://{s3_bucket}/perm/manifests/doomed: "
            "500: Internal Server Error (after 3 attempts)"
        )

        # A store that is not there at all: a closed port.
        gone = Repository(
            s3_server.store(
                s3_bucket, "perm", endpoint=f"http://127.0.0.1:{free_port()}", max_attempts=2
            ),
            repo.config,
        )
        with pytest.raises(StoreError, match="cannot reach S3 endpoint"):
            snapshot_directory(gone, catalog, "doomed", tmp_path / "src")

        proxy.set_plan(FaultPlan())
        assert catalog.backups.committed_names() == {"good"}
        assert repo.list_backup_names() == ["good"]
        assert (
            restore_manifest(repo, catalog, repo.read_manifest("good"), tmp_path / "out")
            == expected
        )


def test_interrupted_backup_rerun_uploads_only_what_is_missing(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    expected = make_tree(tmp_path / "src", seed=4)
    store = s3_server.store(s3_bucket, "int", endpoint=proxy.endpoint, max_attempts=2)
    repo = Repository.init(store)
    with Catalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite'}", repo.id) as catalog:
        # The store dies for good after the third pack is uploaded.
        proxy.set_plan(FaultPlan(fail_after_puts=3, puts_marker="/packs/"))
        with pytest.raises(StoreError):
            snapshot_directory(repo, catalog, "b1", tmp_path / "src")
        proxy.set_plan(FaultPlan())
        survivors = {pack_id for pack_id, _ in repo.list_packs()}
        assert len(survivors) >= 3
        assert repo.list_backup_names() == []

        uploads_before = len(proxy.log.forwarded)
        # A new name, as `casbackup create` picks one per run (the UTC time).
        manifest = snapshot_directory(repo, catalog, "b1-again", tmp_path / "src")
        rerun = [
            f.path
            for f in proxy.log.forwarded[uploads_before:]
            if f.method == "PUT" and "/packs/" in f.path and f.status == 200
        ]
        new_packs = {bytes.fromhex(path.rsplit("/", 1)[1]) for path in rerun}
        assert new_packs and len(rerun) == len(new_packs) and not new_packs & survivors
        # No chunk the first run stored was stored again, and together they hold everything.
        first = {e.chunk_id for p in survivors for e in repo.read_trailer(p)}
        second = {e.chunk_id for p in new_packs for e in repo.read_trailer(p)}
        assert not first & second
        referenced = {c for f in manifest.files for c in f.chunks}
        assert referenced <= first | second
        assert manifest.stats.new_bytes == sum(repo.pack_size(p) for p in new_packs)
        assert (
            restore_manifest(repo, catalog, repo.read_manifest("b1-again"), tmp_path / "out")
            == expected
        )


def test_heartbeat_outlives_a_failed_read_of_its_lock(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy
) -> None:
    """One failed GET of the lock object (the endpoint gone for a moment) must not stop the beats.

    A dead heartbeat thread lets the lease expire under a live backup (other
    hosts then judge it gone), and the thread's exception ends as a traceback.
    """
    store = s3_server.store(s3_bucket, "hb", endpoint=proxy.endpoint, max_attempts=1)
    failed, resumed = threading.Event(), threading.Event()
    choose, record = proxy.choose, proxy.record

    def fail_one_read(method: str, path: str) -> str | None:
        kind = choose(method, path)
        if kind is not None:
            failed.set()
            proxy.set_plan(FaultPlan())
        return kind

    def beat_after_failure(method: str, path: str, status: int) -> None:
        record(method, path, status)
        if failed.is_set() and method == "PUT" and "/locks/" in path and status == 200:
            resumed.set()

    proxy.choose = fail_one_read  # type: ignore[method-assign]
    proxy.record = beat_after_failure  # type: ignore[method-assign]
    lock = Lock(store, "backup", exclusive=False, refresh=0.01).acquire()
    try:
        proxy.set_plan(FaultPlan(permanent=True))
        assert failed.wait(60)
        assert resumed.wait(60), "the heartbeat stopped after one failed read"
        lock.check()
    finally:
        lock.release()


def _clean(cli: Any, repo: str) -> Any:
    """`clean --json` of a repository; no ClickHouse answers (it has no part in the store's clean)."""
    return cli(
        None, "--clickhouse", "clickhouse://default@127.0.0.1:1", "clean", "--json", repo=repo
    )


def test_clean_without_permission_to_list_uploads_warns_and_goes_on(
    s3_auth_server: S3Server,
    limited_user: tuple[str, str, str],
    monkeypatch: pytest.MonkeyPatch,
    cli: Any,
) -> None:
    """docs/operations.md's IAM policy grants no s3:ListBucketMultipartUploads.

    `clean` then cannot look for stale uploads (a bucket lifecycle rule can
    abort them); that is a warning (exit 1), not a failure that also skips
    the stale locks and `--broken` after it.
    """
    use_test_credentials(monkeypatch, endpoint=s3_auth_server.endpoint)
    bucket, access_key, secret_key = limited_user
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    result = _clean(cli, f"s3://{bucket}/r")
    assert result.code == ExitCode.WARNING, result.stderr
    assert result.json()["store_temporaries"] == 0
    assert "skipped stale uploads in the store" in result.stderr and "AccessDenied" in result.stderr
    assert secret_key not in result.stderr + result.stdout


def test_a_server_that_ignores_range_still_gives_the_range(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy
) -> None:
    """HTTP lets a server (or a cache before it) answer a ranged GET with 200 and the whole object.

    Taking that body for the range made every chunk read of a restore a
    whole pack, and the trailer probe "truncated": sound packs reported corrupt.
    """
    store = s3_server.store(s3_bucket, "r", endpoint=proxy.endpoint)
    data = random.Random(5).randbytes(100_000)
    store.put("obj", data)
    proxy.set_plan(FaultPlan(rate=1.0, kinds=("ignore_range",), methods=("GET",)))
    for offset, length in [(5, 10), (0, 1), (99_990, None), (99_990, 100), (100_000, 5)]:
        end = None if length is None else offset + length
        assert store.get("obj", offset, length) == data[offset:end]
    assert store.get("obj") == data
    assert proxy.log.faults["ignore_range"] >= 6


def test_a_lease_that_cannot_be_removed_hides_neither_the_failure_nor_the_name(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """The store fails a backup, and then the DELETE of its lease fails too.

    That second error replaced the first (the operator read "DELETE
    locks/backup-…" for a failed pack upload), and it skipped forgetting the
    run's catalog row: `create` with the same name then said the backup
    already exists, though no manifest was ever written.
    """
    expected = make_tree(tmp_path / "src", seed=5)
    store = s3_server.store(
        s3_bucket,
        "rel",
        endpoint=proxy.endpoint,
        max_attempts=2,
        multipart_threshold=5 * MiB,
        multipart_chunk=5 * MiB,
    )
    repo = Repository.init(store)
    with Catalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite'}", repo.id) as catalog:
        # Pack uploads in parts (their POSTs) fail, and so does every DELETE.
        proxy.set_plan(FaultPlan(rate=1.0, kinds=("500",), methods=("POST", "DELETE")))
        with pytest.raises(StoreError) as caught:
            snapshot_directory(repo, catalog, "b1", tmp_path / "src", pack_size=6 * MiB)
        assert caught.value.message.startswith(
            f"object store error: PUT s3://{s3_bucket}/rel/packs/"
        )
        proxy.set_plan(FaultPlan())
        snapshot_directory(repo, catalog, "b1", tmp_path / "src", pack_size=6 * MiB)
        assert repo.list_backup_names() == ["b1"]
        assert (
            restore_manifest(repo, catalog, repo.read_manifest("b1"), tmp_path / "out") == expected
        )


def test_an_upload_aborted_by_another_host_meanwhile_is_not_an_error(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy
) -> None:
    """Two hosts' `clean` list the same stale upload; the second abort meets 404 NoSuchUpload.

    (So does an upload that completed between the listing and the abort.)
    The upload is gone either way, which is what clean wanted: like a
    DELETE of a missing key, not a failure of the whole command.
    """
    store = s3_server.store(s3_bucket, "two", endpoint=proxy.endpoint)
    client = s3_server.client()
    started = client.create_multipart_upload(Bucket=s3_bucket, Key="two/packs/aa/killed")
    record = proxy.record

    def other_host_aborts_after_listing(method: str, path: str, status: int) -> None:
        record(method, path, status)
        if method == "GET" and "uploads" in path:
            client.abort_multipart_upload(
                Bucket=s3_bucket, Key="two/packs/aa/killed", UploadId=started["UploadId"]
            )

    proxy.record = other_host_aborts_after_listing  # type: ignore[method-assign]
    assert store.abort_stale_uploads(older_than_seconds=3600) == 0
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_clean_of_a_repository_at_the_bucket_root_leaves_other_tools_uploads(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, cli: Any
) -> None:
    """With no prefix, every multipart upload of the bucket is under the store's root.

    `clean` aborted them all once they were old enough: another tool's
    upload of a large export, still running after a day, lost its parts.
    Only uploads under the repository's own key prefixes are casbackup's.
    """
    use_test_credentials(monkeypatch, endpoint=s3_server.endpoint)
    client = s3_server.client()
    ours = f"packs/aa/{'aa' * 32}"
    for key in (ours, "exports/events.csv", "packsfoo/x"):
        client.create_multipart_upload(Bucket=s3_bucket, Key=key)
    result = _clean(cli, f"s3://{s3_bucket}")
    assert result.json()["store_temporaries"] == 1, result.stderr
    left = client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert sorted(u["Key"] for u in left) == ["exports/events.csv", "packsfoo/x"]


def test_a_committed_manifest_is_recorded_as_listings_show_it(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    """The catalog records the manifest's ETag, and exactly as a listing gives it.

    (The commit takes it from a listing because HEAD may quote or case it
    otherwise on some servers; moto answers both alike, so this test holds
    the recorded stamp to the listing's, not HEAD's difference.)
    """
    make_tree(tmp_path / "src", seed=3)
    repo = Repository.init(s3_server.store(s3_bucket, "stamps"))
    with Catalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite'}", repo.id) as catalog:
        snapshot_directory(repo, catalog, "b1", tmp_path / "src")
        stamps = catalog.backups.committed_stamps()
    assert stamps == repo.list_backups() and stamps["b1"].version
