"""An object store in an S3 bucket (AWS or any S3-compatible server), through boto3.

Objects live under ``<prefix>/<key>`` in one bucket, so shards and replicas
can share a bucket with a prefix each. The contract of ``store.base`` maps
onto S3 like this:

- ``put`` is one PUT below the multipart threshold, else a multipart upload
  through boto3's transfer manager (parts in parallel); S3 makes either
  visible all at once, never torn.
- ``create`` is a PUT with ``If-None-Match: *``: S3 refuses it with 412 when
  the key exists, atomically, which is what locks need. A server that ignores
  the header silently breaks exclusive locks (see docs/operations.md); moto
  and AWS S3 honour it.
- ``get`` is a ranged GET; 416 (offset past the end) is an empty read, and
  a 200 with the whole object (a server that ignores Range) is cut to the range.
- ``list`` is ListObjectsV2, which returns keys in byte order: sorted.
- ``delete`` is DeleteObject, which S3 answers with 204 for a missing key.

Retries on throttling (503 SlowDown), 5xx and dropped connections are
botocore's own (``standard`` or ``adaptive`` mode), not a loop of ours. Two
failures botocore cannot see are retried here, each with a narrow tenacity
predicate: a GET body cut short while streaming (checked against the range
and Content-Length), and a conditional PUT that lost a race with another
conditional write (409 ConditionalRequestConflict).

Errors leave as one-line ``StoreError``s naming the bucket and key, never the
credentials.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from casbackup.errors import (
    CasbackupError,
    ConfigError,
    ObjectExists,
    ObjectNotFound,
    StoreError,
    StorePermissionDenied,
)
from casbackup.store.base import ObjectInfo, validate_key, validate_prefix, validate_range

MiB = 1024 * 1024
T = TypeVar("T")

AddressingStyle = Literal["auto", "virtual", "path"]
RetryMode = Literal["standard", "adaptive"]

# Codes that mean "these credentials may not do this" rather than "try again".
_DENIED = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "AccountProblem",
        "403",
    }
)
_MISSING_KEY = frozenset({"NoSuchKey", "404", "NotFound"})
_ERRNO = re.compile(r"\[Errno -?\d+\][^'\")]*")
_CONNECTION_FAILURES = {
    "EndpointConnectionError": "could not connect",
    "ConnectTimeoutError": "connect timed out",
    "ReadTimeoutError": "read timed out",
    "ConnectionClosedError": "connection closed before a response",
}


@dataclass(frozen=True)
class S3Options:
    """How to reach the bucket and how hard to try; ``None`` means boto3's default chain.

    Credentials, region and endpoint left as ``None`` come from boto3's usual
    sources (``AWS_ACCESS_KEY_ID``…, ``AWS_PROFILE``, ``AWS_REGION``,
    ``AWS_ENDPOINT_URL_S3``, instance roles), so scripts need no config file.
    """

    region: str | None = None
    endpoint_url: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    addressing_style: AddressingStyle = "auto"
    storage_class: str | None = None
    sse: str | None = None  # "AES256" or "aws:kms"
    sse_kms_key_id: str | None = None
    max_attempts: int = 10  # per request, the first one included
    retry_mode: RetryMode = "standard"
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    concurrency: int = 8  # multipart parts in flight across all uploads (one shared pool)
    multipart_threshold: int = 16 * MiB
    multipart_chunk: int = 8 * MiB


class _BrokenBody(Exception):
    """A response body that ended early or arrived damaged; the request is repeated."""


@dataclass(frozen=True)
class _Body:
    """A GET's bytes; ``ranged`` when the server answered with a Content-Range (206)."""

    body: bytes
    ranged: bool


class _ConditionalConflict(Exception):
    """S3 refused a conditional PUT because another one on the key was in progress (409)."""


class S3Store:
    def __init__(self, bucket: str, prefix: str = "", options: S3Options | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            validate_prefix(self.prefix)
        self._root = f"{self.prefix}/" if self.prefix else ""
        self.options = options or S3Options()
        self._client = _make_client(self.options)
        self._secrets = tuple(
            s for s in (self.options.access_key_id, self.options.secret_access_key) if s
        )
        self._write_args: dict[str, str] = {}
        if self.options.storage_class:
            self._write_args["StorageClass"] = self.options.storage_class
        if self.options.sse:
            self._write_args["ServerSideEncryption"] = self.options.sse
            if self.options.sse_kms_key_id:
                self._write_args["SSEKMSKeyId"] = self.options.sse_kms_key_id
        self._transfer_lock = threading.Lock()
        self._transfer: Any = None  # created on the first large upload

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return f"{where} at {self.endpoint_host}"

    @property
    def endpoint_host(self) -> str:
        # netloc without any user:password@ an endpoint URL might carry.
        return urlsplit(str(self._client.meta.endpoint_url)).netloc.rpartition("@")[2]

    # --- writing -------------------------------------------------------------

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        name = self._name(key)
        if len(data) >= self.options.multipart_threshold:
            self._call("PUT", key, lambda: self._upload_multipart(name, data))
            return
        self._call(
            "PUT",
            key,
            lambda: self._client.put_object(
                Bucket=self.bucket, Key=name, Body=_as_bytes(data), **self._write_args
            ),
        )

    def put_pieces(self, key: str, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
        # One body for the PUT (botocore re-sends it on a retry): join here.
        self.put(key, b"".join(pieces))

    def create(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """PUT with If-None-Match: *, repeated only when S3 reports a conflicting conditional write.

        A 412 after botocore repeated the PUT (its first response lost) may be
        our own first attempt: the object then holds exactly our bytes. Lock
        objects carry a random id, so another creator's never do.
        """
        name = self._name(key)
        body = _as_bytes(data)
        retrying = Retrying(
            retry=retry_if_exception_type(_ConditionalConflict),
            stop=stop_after_attempt(self.options.max_attempts),
            wait=wait_random_exponential(multiplier=0.05, max=2.0),
            reraise=True,
        )
        try:
            self._call("PUT", key, lambda: retrying(self._create_once, key, name, body))
        except _ConditionalConflict:
            raise ObjectExists(key=key) from None

    def _create_once(self, key: str, name: str, body: bytes) -> None:
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=name, Body=body, IfNoneMatch="*", **self._write_args
            )
        except botocore.exceptions.ClientError as exc:
            code = _code(exc)
            if code in ("PreconditionFailed", "412"):
                if _retried(exc) and self._holds(key, body):
                    # botocore repeated our PUT after losing its response; the
                    # first attempt created the object, so the 412 is our own.
                    return
                raise ObjectExists(key=key) from None
            if code in ("ConditionalRequestConflict", "409"):
                raise _ConditionalConflict() from None
            raise

    def _holds(self, key: str, body: bytes) -> bool:
        try:
            return self.get(key) == body
        except ObjectNotFound:
            return False  # deleted again since: certainly not ours to claim

    def delete(self, key: str) -> None:
        name = self._name(key)
        self._call("DELETE", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=name))

    # --- reading -------------------------------------------------------------

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        validate_range(offset, length)
        name = self._name(key)
        if length == 0:
            self.stat(key)  # still ObjectNotFound for a missing key
            return b""
        request: dict[str, str] = {"Bucket": self.bucket, "Key": name}
        if offset or length is not None:
            last = "" if length is None else str(offset + length - 1)
            request["Range"] = f"bytes={offset}-{last}"
        retrying = Retrying(
            retry=retry_if_exception_type(_BrokenBody),
            stop=stop_after_attempt(self.options.max_attempts),
            wait=wait_random_exponential(multiplier=0.05, max=2.0),
            reraise=True,
        )
        try:
            data = self._call("GET", key, lambda: retrying(self._read, request))
        except _BrokenBody as exc:
            raise StoreError(
                detail=f"GET {self._url(key)}: response body broken on all "
                f"{self.options.max_attempts} attempts ({exc})"
            ) from None
        except StoreError as exc:
            if exc.fields.get("code") == "InvalidRange":
                return b""  # the range starts at or past the end of the object
            raise
        if data.ranged:
            return data.body
        # HTTP lets a server (or a cache before it) ignore Range and answer
        # 200 with the whole object: cut the range out here.
        return data.body[offset : None if length is None else offset + length]

    def _read(self, request: dict[str, str]) -> _Body:
        response = self._client.get_object(**request)
        body = response["Body"]
        try:
            data = body.read()
        except (
            botocore.exceptions.ResponseStreamingError,
            botocore.exceptions.IncompleteReadError,
            botocore.exceptions.ReadTimeoutError,
            botocore.exceptions.FlexibleChecksumError,
        ) as exc:
            raise _BrokenBody(type(exc).__name__) from None
        finally:
            body.close()
        expected = _expected_length(response)
        if expected is not None and len(data) != expected:
            raise _BrokenBody(f"{len(data)} of {expected} bytes")
        return _Body(bytes(data), ranged=bool(response.get("ContentRange")))

    def stat(self, key: str) -> ObjectInfo:
        name = self._name(key)
        response = self._call(
            "HEAD", key, lambda: self._client.head_object(Bucket=self.bucket, Key=name)
        )
        return ObjectInfo(
            key=key, size=int(response["ContentLength"]), version=_etag(response.get("ETag"))
        )

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._root + prefix
        )
        iterator = iter(pages)
        while True:
            page = self._call("LIST", prefix + "*", lambda: next(iterator, None))
            if page is None:
                return
            for item in page.get("Contents", ()):
                key = str(item["Key"])[len(self._root) :]
                try:
                    validate_key(key)
                except StoreError:
                    continue  # a stranger's object (or a "folder" marker): not ours
                yield ObjectInfo(key=key, size=int(item["Size"]), version=_etag(item.get("ETag")))

    # --- maintenance -----------------------------------------------------------

    def abort_stale_uploads(
        self, older_than_seconds: float, *, under: tuple[str, ...] = ("",), dry_run: bool = False
    ) -> int:
        """Abort (or count) multipart uploads under the prefix that a killed process left.

        S3 keeps (and bills) the parts of an upload that was neither completed
        nor aborted; a bucket lifecycle rule (AbortIncompleteMultipartUpload)
        does the same job without casbackup. Only uploads whose key (after the
        store's prefix) starts with one of ``under`` are looked at: with no
        prefix, the store shares the bucket with whatever else writes there.
        """
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
        pages = self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self._root
        )
        iterator = iter(pages)
        aborted = 0
        while True:
            page = self._call("LIST uploads", "*", lambda: next(iterator, None))
            if page is None:
                return aborted
            for upload in page.get("Uploads", ()):
                key = str(upload["Key"])[len(self._root) :]
                if not key.startswith(under):
                    continue
                if upload["Initiated"] < cutoff and (
                    dry_run or self._abort_upload(str(upload["Key"]), str(upload["UploadId"]))
                ):
                    aborted += 1

    def remove_stale_temporaries(
        self, older_than_seconds: float, *, under: tuple[str, ...] = ("",), dry_run: bool = False
    ) -> int:
        return self.abort_stale_uploads(older_than_seconds, under=under, dry_run=dry_run)

    def _abort_upload(self, name: str, upload_id: str) -> bool:
        """Abort one upload; False if it was gone already (another host's clean, or completed)."""
        try:
            self._call(
                "ABORT",
                name[len(self._root) :],
                lambda: self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=name, UploadId=upload_id
                ),
            )
        except StoreError as exc:
            if exc.fields.get("code") == "NoSuchUpload":
                return False
            raise
        return True

    def close(self) -> None:
        with self._transfer_lock:
            if self._transfer is not None:
                self._transfer.shutdown()
                self._transfer = None

    # --- helpers ---------------------------------------------------------------

    def _name(self, key: str) -> str:
        return self._root + validate_key(key)

    def _url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._root}{key}"

    def _upload_multipart(self, name: str, data: bytes | bytearray | memoryview) -> None:
        with self._transfer_lock:
            if self._transfer is None:
                # One transfer manager for the store: its pool bounds the parts
                # in flight across all concurrent uploads, and the client's
                # connection pool is sized to match (see _make_client).
                self._transfer = create_transfer_manager(
                    self._client,
                    TransferConfig(
                        multipart_threshold=self.options.multipart_threshold,
                        multipart_chunksize=self.options.multipart_chunk,
                        max_concurrency=self.options.concurrency,
                        preferred_transfer_client="classic",
                    ),
                )
            transfer = self._transfer
        future = transfer.upload(
            io.BytesIO(data), self.bucket, name, extra_args=dict(self._write_args)
        )
        future.result()

    def _call(self, action: str, key: str, operation: Callable[[], T]) -> T:
        try:
            return operation()
        except botocore.exceptions.ClientError as exc:
            raise self._client_error(exc, action, key) from None
        except botocore.exceptions.NoCredentialsError:
            raise ConfigError(
                detail="no S3 credentials found: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or [s3] access_key_id and secret_access_key"
            ) from None
        except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
            raise StoreError(
                detail=f"cannot reach S3 endpoint {self.endpoint_host} ({action} "
                f"{self._url(key)}: {self._reason(exc)}, after {self.options.max_attempts} attempts)"
            ) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise StoreError(detail=f"{action} {self._url(key)}: {self._clean(str(exc))}") from None

    def _client_error(
        self, exc: botocore.exceptions.ClientError, action: str, key: str
    ) -> CasbackupError:
        code = _code(exc)
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = self._clean(str(error.get("Message") or f"HTTP {status}"))
        if action in ("GET", "HEAD") and code in _MISSING_KEY:
            return ObjectNotFound(key=key)
        if code in ("InvalidRange", "416"):
            return StoreError(code="InvalidRange", detail=f"{action} {self._url(key)}: {message}")
        if code in _DENIED:
            return StorePermissionDenied(key=self._url(key), detail=f"{action}: {code}: {message}")
        if code == "NoSuchBucket":
            return StoreError(
                detail=f"bucket {self.bucket!r} does not exist at {self.endpoint_host}"
            )
        if action == "HEAD" and status == 404:  # HEAD errors carry no body, hence no code
            return ObjectNotFound(key=key)
        retries = int(exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0))
        tried = f" (after {retries + 1} attempts)" if retries else ""
        return StoreError(code=code, detail=f"{action} {self._url(key)}: {code}: {message}{tried}")

    def _reason(self, exc: Exception) -> str:
        underlying = getattr(exc, "kwargs", {}).get("error", "")
        # Each text on its own: searched joined, the errno's text ran on into
        # botocore's ("Connection refused Could not connect to the endpoint URL:").
        for text in (str(underlying), str(exc)):
            found = _ERRNO.search(text)
            if found:
                return self._clean(found.group(0).strip())
        return _CONNECTION_FAILURES.get(type(exc).__name__, type(exc).__name__)

    def _clean(self, text: str) -> str:
        """One line, and never a credential, whatever a server chose to echo."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return " ".join(text.split())


def _make_client(options: S3Options) -> Any:
    """boto3's client; what botocore refuses while building it is the operator's setting to fix.

    botocore checks the endpoint, the region and the profile only here, with
    exceptions (ValueError "Invalid endpoint", InvalidRegionError,
    ProfileNotFound) that would otherwise end as internal errors. The
    endpoint is not repeated: it may carry user:password@.
    """
    try:
        return _build_client(options)
    except botocore.exceptions.InvalidRegionError:  # botocore checks only a region it is given
        raise ConfigError(
            detail=f"[s3] region {options.region!r} is not a region name like eu-central-1"
        ) from None
    except botocore.exceptions.ProfileNotFound as exc:
        raise ConfigError(
            detail=f"S3 profile {exc.kwargs.get('profile')!r} (AWS_PROFILE) is not in the AWS "
            "config or credentials files"
        ) from None
    except botocore.exceptions.BotoCoreError as exc:  # e.g. an AWS config file that does not parse
        text = str(exc)
        for secret in (options.access_key_id, options.secret_access_key):
            if secret:
                text = text.replace(secret, "***")
        raise ConfigError(detail=f"S3 client settings: {' '.join(text.split())}") from None
    except ValueError:  # botocore's "Invalid endpoint: <url>", the only ValueError it raises here
        source = (
            "[s3] endpoint_url"
            if options.endpoint_url is not None  # an empty one too: botocore refuses it
            else "AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (or endpoint_url in the AWS config file)"
        )
        raise ConfigError(
            detail=f"S3 endpoint from {source} is not a URL like https://host:port "
            "(http:// or https:// and a host)"
        ) from None


def _build_client(options: S3Options) -> Any:
    session = boto3.session.Session(
        aws_access_key_id=options.access_key_id,
        aws_secret_access_key=options.secret_access_key,
        region_name=options.region,
    )
    config = botocore.config.Config(
        retries={"mode": options.retry_mode, "total_max_attempts": options.max_attempts},
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
        # Upload threads, fetch threads and the transfer manager's part
        # threads all draw on this pool; a pool smaller than that discards
        # connections (and logs a warning) under load.
        max_pool_connections=3 * options.concurrency + 8,
        s3={"addressing_style": options.addressing_style},
        user_agent_extra="casbackup",
    )
    return session.client("s3", endpoint_url=options.endpoint_url, config=config)


def _code(exc: botocore.exceptions.ClientError) -> str:
    error = exc.response.get("Error", {})
    code = error.get("Code")
    if code:
        return str(code)
    return str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "unknown"))


def _retried(exc: botocore.exceptions.ClientError) -> bool:
    return int(exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)) > 0


def _expected_length(response: dict[str, Any]) -> int | None:
    content_range = response.get("ContentRange")
    if content_range:  # "bytes 8-9/10"
        found = re.match(r"bytes (\d+)-(\d+)/", str(content_range))
        if found:
            return int(found.group(2)) - int(found.group(1)) + 1
    length = response.get("ContentLength")
    return None if length is None else int(length)


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    return data if isinstance(data, bytes) else bytes(data)


def _etag(value: object) -> str:
    """An ETag as listings and HEAD both give it (some servers quote it, some do not)."""
    return str(value).strip('"').lower() if value else ""
