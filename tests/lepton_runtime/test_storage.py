"""Storage over moto: bounded reads, puts, listing, conditional writes, typed errors."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.response
import pytest
from botocore.awsrequest import AWSResponse
from botocore.retries.standard import ExponentialBackoff

from lepton_runtime.errors import (
    AccessDeniedError,
    ObjectChangedError,
    ObjectFormatError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    StorageRequestError,
    StorageUnavailableError,
)
from lepton_runtime.settings import S3Settings, Settings
from lepton_runtime.storage import Storage, make_s3_client

BUCKET = "lepton-test-bucket"


class _Raw:
    """The raw HTTP body botocore reads an injected response from."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


class Faults:
    """Answers chosen S3 requests with an error before they leave botocore (per attempt)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.attempts: list[str] = []

    def inject(
        self, operation: str, status: int, code: str, times: int | None = None, url_part: str = ""
    ) -> None:
        remaining = [times]

        def answer(request: Any, **_: Any) -> AWSResponse | None:
            if url_part not in request.url:
                return None
            self.attempts.append(request.url)
            if remaining[0] is not None:
                if remaining[0] == 0:
                    return None
                remaining[0] -= 1
            body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
            return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, _Raw(body))

        self.client.meta.events.register_first(f"before-send.s3.{operation}", answer)


@pytest.fixture
def storage(mock_aws: None) -> Storage:
    store = Storage.from_settings(Settings())
    store.client.create_bucket(Bucket=BUCKET)
    return store


@pytest.fixture
def faults(storage: Storage) -> Faults:
    return Faults(storage.client)


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore waits up to seconds between throttled attempts; tests need not."""
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0)


@pytest.fixture
def body_reads(monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    """Every StreamingBody.read call (its amount), to prove a body was or was not downloaded."""
    calls: list[int | None] = []
    original: Callable[..., bytes] = botocore.response.StreamingBody.read

    def read(self: Any, amt: int | None = None) -> bytes:
        calls.append(amt)
        return original(self, amt)

    monkeypatch.setattr(botocore.response.StreamingBody, "read", read)
    return calls


def test_get_bytes_returns_the_object(storage: Storage) -> None:
    storage.put_bytes(BUCKET, "images/a.png", b"\x89PNG", "image/png")
    stored = storage.get_bytes(BUCKET, "images/a.png", max_bytes=4)
    assert (stored.data, stored.size, stored.content_type) == (b"\x89PNG", 4, "image/png")
    assert stored.etag == storage.head(BUCKET, "images/a.png").etag


def test_get_bytes_refuses_a_large_object_without_reading_its_body(
    storage: Storage, body_reads: list[int | None]
) -> None:
    storage.put_bytes(BUCKET, "images/big.png", b"x" * 2048)
    with pytest.raises(ObjectTooLargeError, match="2048 bytes"):
        storage.get_bytes(BUCKET, "images/big.png", max_bytes=1024)
    assert body_reads == []


def test_get_bytes_reads_at_most_one_byte_past_the_limit(
    storage: Storage, body_reads: list[int | None]
) -> None:
    storage.put_bytes(BUCKET, "images/a.png", b"abc")
    storage.get_bytes(BUCKET, "images/a.png", max_bytes=3)
    assert body_reads == [4]


def test_get_to_file_streams_the_object_in_chunks(
    storage: Storage, body_reads: list[int | None], tmp_path: Path
) -> None:
    data = bytes(range(256)) * 40
    storage.put_bytes(BUCKET, "datasets/d.zip", data, "application/zip")
    with (tmp_path / "d.zip").open("wb") as spool:
        info = storage.get_to_file(BUCKET, "datasets/d.zip", spool, len(data), chunk_bytes=4096)
    assert (tmp_path / "d.zip").read_bytes() == data
    assert (info.size, info.content_type) == (len(data), "application/zip")
    assert max(amount or 0 for amount in body_reads) <= 4096 and len(body_reads) >= 3


def test_get_to_file_refuses_a_large_object_without_reading_its_body(
    storage: Storage, body_reads: list[int | None]
) -> None:
    storage.put_bytes(BUCKET, "datasets/big.zip", b"x" * 2048)
    spool = io.BytesIO()
    with pytest.raises(ObjectTooLargeError, match="2048 bytes"):
        storage.get_to_file(BUCKET, "datasets/big.zip", spool, 1024)
    assert body_reads == [] and spool.tell() == 0


def test_get_to_file_without_a_length_stops_one_byte_past_the_limit(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunked answer (no Content-Length) is counted as it arrives."""
    storage.put_bytes(BUCKET, "datasets/big.zip", b"x" * 10_000)
    get_object = storage.client.get_object

    def without_length(**kwargs: Any) -> dict[str, Any]:
        response = get_object(**kwargs)
        del response["ContentLength"]
        return response

    monkeypatch.setattr(storage.client, "get_object", without_length)
    spool = io.BytesIO()
    with pytest.raises(ObjectTooLargeError, match="more than that"):
        storage.get_to_file(BUCKET, "datasets/big.zip", spool, 4000, chunk_bytes=1000)
    assert spool.tell() == 4000


@pytest.mark.parametrize(
    ("bucket", "key"), [(BUCKET, "images/missing.png"), ("lepton-no-such-bucket", "a.png")]
)
def test_missing_objects_and_buckets_are_not_found(storage: Storage, bucket: str, key: str) -> None:
    with pytest.raises(ObjectNotFoundError):
        storage.get_bytes(bucket, key, max_bytes=10)


def test_head_of_a_missing_object_is_not_found(storage: Storage) -> None:
    with pytest.raises(ObjectNotFoundError):
        storage.head(BUCKET, "nothing")


def test_exists(storage: Storage) -> None:
    storage.put_bytes(BUCKET, "here", b"1")
    assert (storage.exists(BUCKET, "here"), storage.exists(BUCKET, "gone")) == (True, False)


def test_put_json_round_trips_as_application_json(storage: Storage) -> None:
    storage.put_json(BUCKET, "r/a.json", {"label": "été", "n": 1})
    assert storage.get_json(BUCKET, "r/a.json") == {"label": "été", "n": 1}
    assert storage.head(BUCKET, "r/a.json").content_type == "application/json"


def test_get_json_of_a_missing_object_may_be_none(storage: Storage) -> None:
    assert storage.get_json(BUCKET, "r/none.json", missing_ok=True) is None


def test_get_json_of_broken_json_is_a_permanent_format_error(storage: Storage) -> None:
    storage.put_bytes(BUCKET, "r/bad.json", b"{not json")
    with pytest.raises(ObjectFormatError) as caught:
        storage.get_json(BUCKET, "r/bad.json")
    assert not caught.value.retryable


def test_put_if_absent_never_overwrites(storage: Storage) -> None:
    assert storage.put_json(BUCKET, "r/once.json", {"n": 1}, if_absent=True) is not None
    assert storage.put_json(BUCKET, "r/once.json", {"n": 2}, if_absent=True) is None
    assert storage.get_json(BUCKET, "r/once.json") == {"n": 1}


def test_put_file_uploads_with_a_guessed_type(storage: Storage, tmp_path: Path) -> None:
    path = tmp_path / "metadata.json"
    path.write_text('{"version": "v1"}')
    storage.put_file(BUCKET, "m/metadata.json", path)
    assert storage.get_json(BUCKET, "m/metadata.json") == {"version": "v1"}
    assert storage.head(BUCKET, "m/metadata.json").content_type == "application/json"


def test_list_objects_lists_only_the_prefix_in_key_order(storage: Storage) -> None:
    for key in ("datasets/d/b.png", "datasets/d/a.png", "datasets/other.zip", "images/x.png"):
        storage.put_bytes(BUCKET, key, b"12")
    listed = [(info.key, info.size) for info in storage.list_objects(BUCKET, "datasets/d/")]
    assert listed == [("datasets/d/a.png", 2), ("datasets/d/b.png", 2)]


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (403, "AccessDenied", AccessDeniedError),
        (403, "InvalidAccessKeyId", AccessDeniedError),
        (404, "NoSuchKey", ObjectNotFoundError),
        (503, "SlowDown", StorageUnavailableError),
        (500, "InternalError", StorageUnavailableError),
        (503, "ServiceUnavailable", StorageUnavailableError),
    ],
)
@pytest.mark.usefixtures("no_backoff")
def test_s3_errors_become_typed_errors(
    storage: Storage, faults: Faults, status: int, code: str, error: type[Exception]
) -> None:
    faults.inject("GetObject", status, code)
    with pytest.raises(error):
        storage.get_bytes(BUCKET, "images/a.png", max_bytes=10)


@pytest.mark.parametrize("code", ["InvalidArgument", "KeyTooLongError", "InvalidRequest"])
def test_other_client_errors_are_permanent_request_errors(
    storage: Storage, faults: Faults, code: str
) -> None:
    faults.inject("GetObject", 400, code)
    with pytest.raises(StorageRequestError) as caught:
        storage.get_bytes(BUCKET, "images/a.png", max_bytes=10)
    assert not caught.value.retryable


def test_transient_faults_are_retried_until_success(storage: Storage, faults: Faults) -> None:
    storage.put_bytes(BUCKET, "images/a.png", b"ok")
    faults.inject("GetObject", 503, "ServiceUnavailable", times=2)
    assert storage.get_bytes(BUCKET, "images/a.png", max_bytes=10).data == b"ok"
    assert len(faults.attempts) == 3


def test_transient_faults_give_up_after_max_attempts(storage: Storage, faults: Faults) -> None:
    faults.inject("GetObject", 500, "InternalError")
    with pytest.raises(StorageUnavailableError) as caught:
        storage.get_bytes(BUCKET, "images/a.png", max_bytes=10)
    assert caught.value.retryable
    assert len(faults.attempts) == Settings().s3.max_attempts


FAST = Settings(s3=S3Settings(connect_timeout=0.5, read_timeout=0.5, max_attempts=2))


def test_an_unreachable_endpoint_is_unavailable_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError):
        Storage.from_settings(FAST).get_bytes(BUCKET, "a.png", max_bytes=10)
    assert time.monotonic() - started < 5


def test_a_silent_endpoint_times_out_as_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        with pytest.raises(StorageUnavailableError, match=r"timeout|timed out"):
            Storage.from_settings(FAST).get_bytes(BUCKET, "a.png", max_bytes=10)


def test_a_custom_endpoint_gets_path_style_addressing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://minio.lepton.svc:9000")
    client = make_s3_client(Settings())
    assert client.meta.endpoint_url == "http://minio.lepton.svc:9000"
    assert client.meta.config.s3["addressing_style"] == "path"


def test_aws_keeps_the_default_addressing() -> None:
    client = make_s3_client(Settings())
    assert "amazonaws.com" in client.meta.endpoint_url
    assert not (client.meta.config.s3 or {}).get("addressing_style")


def test_an_explicit_addressing_style_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    client = make_s3_client(Settings(s3=S3Settings(addressing_style="virtual")))
    assert client.meta.config.s3["addressing_style"] == "virtual"


def test_the_client_uses_standard_retries_and_the_timeouts() -> None:
    config = make_s3_client(FAST).meta.config
    assert (config.retries["mode"], config.connect_timeout, config.read_timeout) == (
        "standard",
        0.5,
        0.5,
    )


def test_bounded_reads_over_a_real_moto_server(moto_endpoint: str) -> None:
    storage = Storage.from_settings(Settings())
    storage.client.create_bucket(Bucket="lepton-storage-http")
    storage.put_bytes("lepton-storage-http", "images/big.bin", b"\0" * (2 * 1024 * 1024))
    with pytest.raises(ObjectTooLargeError):
        storage.get_bytes("lepton-storage-http", "images/big.bin", max_bytes=1024 * 1024)
    assert storage.get_bytes("lepton-storage-http", "images/big.bin", 4 * 1024 * 1024).size == (
        2 * 1024 * 1024
    )


def test_a_read_of_an_object_version_that_was_overwritten_is_refused(storage: Storage) -> None:
    first = storage.put_bytes(BUCKET, "images/a.png", b"first")
    storage.put_bytes(BUCKET, "images/a.png", b"second")
    with pytest.raises(ObjectChangedError) as caught:
        storage.get_bytes(BUCKET, "images/a.png", 100, if_match=first)
    assert not caught.value.retryable


def test_a_conditional_write_replaces_only_the_version_read(storage: Storage) -> None:
    first = storage.put_json(BUCKET, "p.json", {"n": 1})
    second = storage.put_json(BUCKET, "p.json", {"n": 2}, if_match=first)
    assert second is not None
    assert storage.put_json(BUCKET, "p.json", {"n": 3}, if_match=first) is None
    assert storage.get_json(BUCKET, "p.json") == {"n": 2}


def test_a_conditional_delete_leaves_a_newer_version_alone(storage: Storage) -> None:
    first = storage.put_json(BUCKET, "r.json", {"n": 1})
    storage.put_json(BUCKET, "r.json", {"n": 2})
    assert storage.delete(BUCKET, "r.json", if_match=first) is False
    assert storage.exists(BUCKET, "r.json")


def test_list_prefixes_lists_the_folders_under_a_prefix(storage: Storage) -> None:
    for key in ("m/v1/a", "m/v2/a", "m/latest.json"):
        storage.put_bytes(BUCKET, key, b"x")
    assert storage.list_prefixes(BUCKET, "m/") == ["m/v1/", "m/v2/"]


# --- the client made on first use -------------------------------------------------------------


def test_storage_from_settings_makes_its_client_on_first_use(mock_aws: None) -> None:
    store = Storage.from_settings(Settings())
    assert not store.client_made
    assert store.get_json(BUCKET, "missing.json", missing_ok=True) is None  # no such bucket
    assert store.client_made


def test_an_explicit_client_is_used_as_given(mock_aws: None) -> None:
    client = make_s3_client(Settings())
    store = Storage(client)
    assert store.client_made and store.client is client


def test_the_client_is_made_once_whichever_threads_ask_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[object] = []

    def slow_client(settings: Settings) -> object:
        time.sleep(0.05)  # wide open for a second thread to make another
        made.append(object())
        return made[-1]

    monkeypatch.setattr("lepton_runtime.storage.make_s3_client", slow_client)
    store = Storage.from_settings(Settings())
    seen: list[object] = []
    threads = [threading.Thread(target=lambda: seen.append(store.client)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 1 and seen == made * 8


def test_errors_of_a_lazily_made_client_are_typed(mock_aws: None) -> None:
    store = Storage.from_settings(Settings())
    with pytest.raises(ObjectNotFoundError):
        store.get_bytes("no-such-bucket", "key", 10)


def test_boto3_is_imported_only_when_the_client_is_made() -> None:
    code = (
        "import sys\n"
        "from lepton_runtime.settings import Settings\n"
        "from lepton_runtime.storage import Storage\n"
        "store = Storage.from_settings(Settings())\n"
        "before = sorted(m for m in ('boto3', 'botocore') if m in sys.modules)\n"
        "store.client\n"
        "after = sorted(m for m in ('boto3', 'botocore') if m in sys.modules)\n"
        "print(before, after)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[] ['boto3', 'botocore']"
