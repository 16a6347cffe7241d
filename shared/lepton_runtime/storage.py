"""Object storage over boto3: bounded and conditional reads and writes, JSON, files, listings.

The client is configured the standard way: endpoint, region and credentials come from boto3's
own resolution (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_REGION / AWS_DEFAULT_REGION, the
credential chain, ~/.aws/config); only retries, timeouts and addressing style come from
Settings. botocore errors leave this module as the typed errors of `lepton_runtime.errors`:
missing -> ObjectNotFoundError, forbidden -> AccessDeniedError, unreachable / timeouts / 5xx /
throttling (after botocore's own retries) -> StorageUnavailableError (the only retryable one),
any other refusal (an unknown 4xx such as KeyTooLong, parameters botocore rejects) ->
StorageRequestError, an object that is not the JSON it must be -> ObjectFormatError.
"""

from __future__ import annotations

import json
import mimetypes
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

from lepton_runtime import jsonio
from lepton_runtime.errors import (
    AccessDeniedError,
    BadRequestError,
    ObjectChangedError,
    ObjectFormatError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    StorageError,
    StorageRequestError,
    StorageUnavailableError,
)
from lepton_runtime.settings import S3Settings, Settings

if TYPE_CHECKING:  # boto3 and botocore are imported when a client is made (~0.3 s of a start)
    from botocore.config import Config

OCTET_STREAM = "application/octet-stream"
JSON = "application/json"

_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "NotFound", "404", "NoSuchVersion"}
_DENIED = {
    "AccessDenied",
    "403",
    "Forbidden",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AccountProblem",
}
_TRANSIENT = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
    "XMinioServerNotInitialized",
}
_PRECONDITION = {"PreconditionFailed", "ConditionalRequestConflict", "412"}
_AWS_HOST_SUFFIXES = (".amazonaws.com", ".amazonaws.com.cn")


@dataclass(frozen=True)
class ObjectInfo:
    """What S3 says about an object without its body (HEAD, listings)."""

    bucket: str
    key: str
    size: int
    etag: str | None = None
    content_type: str | None = None
    version_id: str | None = None
    last_modified: datetime | None = None


@dataclass(frozen=True)
class StoredObject:
    """A whole object read into memory (always under a size limit)."""

    data: bytes
    etag: str | None
    size: int
    content_type: str | None
    version_id: str | None
    last_modified: datetime | None


def client_config(s3: S3Settings, *, addressing_style: str | None = None) -> Config:
    """botocore Config: standard retry mode, the configured timeouts and addressing style."""
    from botocore.config import Config

    options: dict[str, Any] = {
        # total_max_attempts counts the first try; botocore's max_attempts would count retries.
        "retries": {"mode": "standard", "total_max_attempts": s3.max_attempts},
        "connect_timeout": s3.connect_timeout,
        "read_timeout": s3.read_timeout,
    }
    if addressing_style is not None:
        options["s3"] = {"addressing_style": addressing_style}
    return Config(**options)


def make_s3_client(settings: Settings) -> Any:
    """An S3 client; path-style when the style is "auto" and the endpoint is not AWS (MinIO).

    Virtual-host addressing against a custom endpoint asks for `<bucket>.minio:9000`, which no
    in-cluster DNS resolves; path style is what every S3-compatible store speaks.
    """
    import boto3

    style = settings.s3.addressing_style
    if style != "auto":
        return boto3.client("s3", config=client_config(settings.s3, addressing_style=style))
    client = boto3.client("s3", config=client_config(settings.s3))
    if is_aws_endpoint(client.meta.endpoint_url):
        return client
    return boto3.client("s3", config=client_config(settings.s3, addressing_style="path"))


def make_sqs_client(settings: Settings) -> Any:
    """An SQS client for the event-source adapter; its read timeout outlasts a long poll."""
    import boto3
    from botocore.config import Config

    s3 = settings.s3
    config = Config(
        retries={"mode": "standard", "total_max_attempts": s3.max_attempts},
        connect_timeout=s3.connect_timeout,
        read_timeout=max(s3.read_timeout, settings.poll_wait_seconds + 10.0),
    )
    return boto3.client("sqs", config=config)


class Storage:
    """Typed, bounded access to S3 objects through one boto3 client (thread-safe).

    Made from settings, the client (and boto3 with it) is created on first use, once, whichever
    thread gets there first: a process that starts from a prefetched model (see
    inference/prefetch.py) serves its first requests without having imported boto3.
    """

    def __init__(self, client: Any = None, *, settings: Settings | None = None) -> None:
        if client is None and settings is None:
            raise TypeError("Storage needs a client or the settings to make one")
        self._client = client
        self._settings = settings
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Storage:
        """Storage whose client is made from `settings` when first needed."""
        return cls(settings=settings)

    @property
    def client(self) -> Any:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    assert self._settings is not None
                    self._client = make_s3_client(self._settings)
                client = self._client
        return client

    @client.setter
    def client(self, value: Any) -> None:
        self._client = value

    @property
    def client_made(self) -> bool:
        """Whether the boto3 client exists yet (it is made on first use)."""
        return self._client is not None

    @property
    def endpoint_url(self) -> str:
        return str(self.client.meta.endpoint_url)

    def get_bytes(
        self,
        bucket: str,
        key: str,
        max_bytes: int,
        *,
        version_id: str | None = None,
        if_match: str | None = None,
    ) -> StoredObject:
        """Read a whole object of at most `max_bytes`.

        One GET: its Content-Length is checked before the body is read, and a too large object
        is refused by closing the stream, so its body is never downloaded. With `version_id`
        or `if_match` (an ETag) the read is of that object only: ObjectChangedError if it was
        overwritten since.
        """
        extra: dict[str, Any] = {"VersionId": version_id} if version_id else {}
        if if_match:
            extra["IfMatch"] = f'"{if_match}"'
        try:
            with _mapped(bucket, key, "read"):
                response = self.client.get_object(Bucket=bucket, Key=key, **extra)
        except _PreconditionFailed as exc:
            raise ObjectChangedError(
                f"s3://{bucket}/{key} is no longer the object with ETag {if_match}"
            ) from exc
        with _mapped(bucket, key, "read"):
            body = response["Body"]
            try:
                length = response.get("ContentLength")
                if length is not None and length > max_bytes:
                    raise _too_large(bucket, key, length, max_bytes)
                # Without a length (chunked answers) read one byte past the limit to notice.
                data = body.read(max_bytes + 1)
                if len(data) > max_bytes:
                    raise _too_large(bucket, key, None, max_bytes)
            finally:
                body.close()
        return StoredObject(
            data=data,
            etag=normalise_etag(response.get("ETag")),
            size=len(data),
            content_type=response.get("ContentType"),
            version_id=response.get("VersionId"),
            last_modified=response.get("LastModified"),
        )

    def get_to_file(
        self,
        bucket: str,
        key: str,
        fileobj: BinaryIO,
        max_bytes: int,
        *,
        chunk_bytes: int = 1024 * 1024,
    ) -> ObjectInfo:
        """Stream an object of at most `max_bytes` into `fileobj`, one chunk at a time.

        As in get_bytes, Content-Length is checked before the body is read; the body is also
        counted as it arrives, so a chunked answer is cut off one byte past the limit.
        """
        with _mapped(bucket, key, "read"):
            response = self.client.get_object(Bucket=bucket, Key=key)
            body = response["Body"]
            try:
                length = response.get("ContentLength")
                if length is not None and length > max_bytes:
                    raise _too_large(bucket, key, length, max_bytes)
                size = 0
                while chunk := body.read(min(chunk_bytes, max_bytes + 1 - size)):
                    size += len(chunk)
                    if size > max_bytes:
                        raise _too_large(bucket, key, None, max_bytes)
                    fileobj.write(chunk)
            finally:
                body.close()
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size=size,
            etag=normalise_etag(response.get("ETag")),
            content_type=response.get("ContentType"),
            version_id=response.get("VersionId"),
            last_modified=response.get("LastModified"),
        )

    def get_json(
        self, bucket: str, key: str, max_bytes: int = 1024 * 1024, *, missing_ok: bool = False
    ) -> Any:
        """Read and decode a JSON object of at most `max_bytes` (None if missing and allowed)."""
        found = self.read_json(bucket, key, max_bytes)
        if found is None:
            if missing_ok:
                return None
            raise ObjectNotFoundError(f"s3://{bucket}/{key} does not exist")
        return found[0]

    def read_json(
        self, bucket: str, key: str, max_bytes: int = 1024 * 1024
    ) -> tuple[Any, str | None] | None:
        """A JSON object and its ETag (for a conditional write after), or None if missing."""
        try:
            stored = self.get_bytes(bucket, key, max_bytes)
        except ObjectNotFoundError:
            return None
        try:
            return jsonio.loads(stored.data, what=f"s3://{bucket}/{key}"), stored.etag
        except BadRequestError as exc:
            raise ObjectFormatError(str(exc)) from exc

    def head(self, bucket: str, key: str) -> ObjectInfo:
        with _mapped(bucket, key, "inspect"):
            response = self.client.head_object(Bucket=bucket, Key=key)
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size=int(response.get("ContentLength", 0)),
            etag=normalise_etag(response.get("ETag")),
            content_type=response.get("ContentType"),
            version_id=response.get("VersionId"),
            last_modified=response.get("LastModified"),
        )

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.head(bucket, key)
        except ObjectNotFoundError:
            return False
        return True

    def put_bytes(
        self,
        bucket: str,
        key: str,
        data: bytes,
        content_type: str = OCTET_STREAM,
        *,
        metadata: Mapping[str, str] | None = None,
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> str | None:
        """Write an object; return its ETag.

        With `if_absent` the write is conditional (If-None-Match: *) and None is returned when
        the object already exists: a redelivered event then cannot overwrite a result. With
        `if_match` (an ETag) it replaces only that version of the object, else None.
        """
        return self._put(bucket, key, data, content_type, metadata, if_absent, if_match)

    def put_json(
        self,
        bucket: str,
        key: str,
        value: Any,
        *,
        metadata: Mapping[str, str] | None = None,
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> str | None:
        """Write `value` as UTF-8 JSON; return its ETag (None: a condition did not hold)."""
        data = json.dumps(value, ensure_ascii=False, sort_keys=True).encode()
        return self._put(bucket, key, data, JSON, metadata, if_absent, if_match)

    def put_file(
        self, bucket: str, key: str, path: Path, content_type: str | None = None
    ) -> str | None:
        """Upload a local file in one PUT (model artifacts are far below the 5 GB PUT limit)."""
        with path.open("rb") as stream:
            return self._put(bucket, key, stream, content_type or guess_type(path.name), None)

    def list_objects(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under `prefix`, in key order, page by page."""
        paginator = self.client.get_paginator("list_objects_v2")
        with _mapped(bucket, prefix, "list"):
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", ()):
                    yield ObjectInfo(
                        bucket=bucket,
                        key=item["Key"],
                        size=int(item.get("Size", 0)),
                        etag=normalise_etag(item.get("ETag")),
                        last_modified=item.get("LastModified"),
                    )

    def list_prefixes(self, bucket: str, prefix: str = "") -> list[str]:
        """The "folders" directly under `prefix` (CommonPrefixes with delimiter '/')."""
        paginator = self.client.get_paginator("list_objects_v2")
        found: list[str] = []
        with _mapped(bucket, prefix, "list"):
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
                found.extend(item["Prefix"] for item in page.get("CommonPrefixes", ()))
        return found

    def delete(self, bucket: str, key: str, *, if_match: str | None = None) -> bool:
        """Delete an object (with `if_match`, only that version of it); False if the condition
        did not hold."""
        extra = {"IfMatch": f'"{if_match}"'} if if_match else {}
        try:
            with _mapped(bucket, key, "delete"):
                self.client.delete_object(Bucket=bucket, Key=key, **extra)
        except _PreconditionFailed:
            return False
        return True

    def _put(
        self,
        bucket: str,
        key: str,
        body: Any,
        content_type: str,
        metadata: Mapping[str, str] | None,
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> str | None:
        extra: dict[str, Any] = {}
        if metadata:
            extra["Metadata"] = dict(metadata)
        if if_absent:
            extra["IfNoneMatch"] = "*"
        if if_match:
            extra["IfMatch"] = f'"{if_match}"'
        try:
            with _mapped(bucket, key, "write"):
                response = self.client.put_object(
                    Bucket=bucket, Key=key, Body=body, ContentType=content_type, **extra
                )
        except _PreconditionFailed:
            return None
        return normalise_etag(response.get("ETag"))


def normalise_etag(etag: Any) -> str | None:
    """ETags without the quotes HTTP puts around them, so events and HEAD answers compare."""
    if not isinstance(etag, str):
        return None
    return etag.strip('"') or None


def guess_type(name: str) -> str:
    """Content type from a file name (`.json` -> application/json), octet-stream otherwise."""
    return mimetypes.guess_type(name)[0] or OCTET_STREAM


class _PreconditionFailed(StorageError):
    """Internal: a conditional write found the object already there."""


@contextmanager
def _mapped(bucket: str, key: str, action: str) -> Iterator[None]:
    """Translate botocore exceptions raised inside the block into typed storage errors."""
    where = f"s3://{bucket}/{key}"
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        mapped = _translated(exc, where, action)
        if mapped is None:
            raise
        raise mapped from exc


def _translated(exc: Exception, where: str, action: str) -> StorageError | None:
    """The typed error for a botocore exception; None for any other exception."""
    if "botocore.exceptions" not in sys.modules:
        return None  # no client was ever made here: it is not a botocore error
    # Imported where used: boto3 and botocore load with the first client (see Storage).
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        HTTPClientError,
        IncompleteReadError,
        NoCredentialsError,
        PartialCredentialsError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = f"cannot {action} {where}: {code or status} {error.get('Message', '')}".strip()
        if code in _PRECONDITION or status == 412:
            return _PreconditionFailed(message)
        if code in _NOT_FOUND or status == 404:
            return ObjectNotFoundError(message)
        if code in _DENIED or status == 403:
            return AccessDeniedError(message)
        if code in _TRANSIENT or status >= 500 or status == 429:
            return StorageUnavailableError(message)
        return StorageRequestError(message)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return AccessDeniedError(f"cannot {action} {where}: {exc}")
    if isinstance(exc, BotoConnectionError | HTTPClientError | IncompleteReadError):
        # Connection refused, DNS, connect/read timeouts, connections closed mid-answer.
        return StorageUnavailableError(f"cannot {action} {where}: {exc}")
    if isinstance(exc, BotoCoreError):
        # ParamValidationError and the like: the request itself is wrong, retrying cannot help.
        return StorageRequestError(f"cannot {action} {where}: {exc}")
    return None


def _too_large(bucket: str, key: str, size: int | None, limit: int) -> ObjectTooLargeError:
    size_text = f"{size} bytes" if size is not None else "more than that"
    return ObjectTooLargeError(f"s3://{bucket}/{key} is {size_text}; the limit is {limit} bytes")


def is_aws_endpoint(url: str | None) -> bool:
    host = urlsplit(url or "").hostname or ""
    return host.endswith(_AWS_HOST_SUFFIXES)
