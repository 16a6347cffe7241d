"""SignedGets: the prefetch's GET-only reader signs like botocore, reads what boto3 reads, and
leaves Storage's bounds and typed errors as they are over the real client."""

from __future__ import annotations

import datetime
import http.server
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.auth import SIGV4_TIMESTAMP, S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from lepton_runtime.errors import (
    AccessDeniedError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    StorageUnavailableError,
)
from lepton_runtime.settings import Settings
from lepton_runtime.signed_gets import SignedGets
from lepton_runtime.storage import Storage, normalise_etag

KEYS = ["plain.json", "digits/v1/model.tflite", "a key with spaces+plus", "ünïcødé/ключ~.bin"]


@pytest.fixture
def bucket(moto_endpoint: str) -> str:
    name = f"signed-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture
def reader(moto_endpoint: str) -> SignedGets:
    found = SignedGets.from_settings(Settings.from_env({}))
    assert found is not None
    return found


# --- when it is used -----------------------------------------------------------------------------


def test_a_configured_endpoint_gets_a_reader(moto_endpoint: str) -> None:
    reader = SignedGets.from_settings(Settings.from_env({}))
    assert reader is not None and reader.meta.endpoint_url == moto_endpoint


def test_the_s3_specific_endpoint_variable_is_honoured(monkeypatch, moto_server: str) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://elsewhere.invalid:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server)
    reader = SignedGets.from_settings(Settings.from_env({}))
    assert reader is not None and reader.meta.endpoint_url == moto_server


def test_no_endpoint_means_the_real_client() -> None:
    assert SignedGets.from_settings(Settings.from_env({})) is None


def test_an_aws_endpoint_means_the_real_client(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3.eu-west-1.amazonaws.com")
    assert SignedGets.from_settings(Settings.from_env({})) is None


def test_virtual_host_addressing_means_the_real_client(moto_endpoint: str) -> None:
    settings = Settings.from_env({"LEPTON_S3_ADDRESSING_STYLE": "virtual"})
    assert SignedGets.from_settings(settings) is None


def test_ignored_configured_endpoints_mean_the_real_client(monkeypatch, moto_endpoint) -> None:
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    assert SignedGets.from_settings(Settings.from_env({})) is None


def test_no_credentials_mean_the_real_client(monkeypatch, moto_endpoint: str) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    assert SignedGets.from_settings(Settings.from_env({})) is None


# --- what it reads -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", KEYS)
def test_it_reads_what_boto3_reads(bucket: str, reader: SignedGets, key: str) -> None:
    client = boto3.client("s3")
    body = uuid.uuid4().bytes * 300
    client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/x-test")
    real = Storage(client).get_bytes(bucket, key, 1 << 20)

    ours = Storage(reader).get_bytes(bucket, key, 1 << 20)

    assert ours.data == real.data == body
    assert (ours.etag, ours.content_type, ours.size) == (real.etag, real.content_type, real.size)
    assert ours.last_modified == real.last_modified


def test_it_streams_a_file(bucket: str, reader: SignedGets, tmp_path) -> None:
    body = bytes(range(256)) * 8000  # ~2 MB, in several chunks
    put = boto3.client("s3").put_object(Bucket=bucket, Key="big.bin", Body=body)
    with (tmp_path / "big.bin").open("wb") as out:
        info = Storage(reader).get_to_file(bucket, "big.bin", out, len(body), chunk_bytes=65536)
    assert (tmp_path / "big.bin").read_bytes() == body
    assert info.size == len(body) and info.etag == normalise_etag(put["ETag"])


def test_a_missing_key_is_not_found(bucket: str, reader: SignedGets) -> None:
    with pytest.raises(ObjectNotFoundError, match="NoSuchKey"):
        Storage(reader).get_bytes(bucket, "absent.json", 1024)


def test_a_missing_bucket_is_not_found(moto_endpoint: str, reader: SignedGets) -> None:
    assert Storage(reader).read_json(f"absent-{uuid.uuid4().hex[:8]}", "x.json") is None


def test_a_too_large_object_is_refused(bucket: str, reader: SignedGets) -> None:
    boto3.client("s3").put_object(Bucket=bucket, Key="large.bin", Body=b"x" * 5000)
    with pytest.raises(ObjectTooLargeError, match="5000 bytes"):
        Storage(reader).get_bytes(bucket, "large.bin", 4999)


def test_an_unreachable_endpoint_is_unavailable(monkeypatch) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    reader = SignedGets.from_settings(Settings.from_env({}))
    assert reader is not None
    with pytest.raises(StorageUnavailableError):
        Storage(reader).get_bytes("bucket", "key.json", 1024)


def test_only_whole_object_reads_are_offered(reader: SignedGets) -> None:
    with pytest.raises(TypeError, match="whole objects"):
        reader.get_object(Bucket="b", Key="k", VersionId="v")


# --- the signature -------------------------------------------------------------------------------


class _VerifyingS3(http.server.BaseHTTPRequestHandler):
    """Checks each GET's SigV4 signature as S3 does: the canonical request rebuilt from what
    arrived (the path as sent, the headers the signature names), signed with the secret key,
    compared."""

    secret = Credentials("AKIDVERIFY", "verify-secret", "verify-token")
    seen: list[str] = []

    def do_GET(self) -> None:
        authorization = self.headers["Authorization"]
        signed = authorization.split("SignedHeaders=", 1)[1].split(",", 1)[0].split(";")
        headers = {name: self.headers[name] for name in signed}
        request = AWSRequest("GET", f"http://{self.headers['Host']}{self.path}", headers=headers)
        request.context["timestamp"] = self.headers["X-Amz-Date"]
        signer = S3SigV4Auth(self.secret, "s3", "us-east-1")
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        given = authorization.rsplit("Signature=", 1)[-1]
        self.seen.append(self.path)
        if given == expected and self.headers["X-Amz-Security-Token"] == self.secret.token:
            body, status = b"signed right", 200
        else:
            body, status = b"<Error><Code>SignatureDoesNotMatch</Code></Error>", 403
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def verifying_s3(monkeypatch) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _VerifyingS3)
    _VerifyingS3.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", _VerifyingS3.secret.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", _VerifyingS3.secret.secret_key)
    monkeypatch.setenv("AWS_SESSION_TOKEN", _VerifyingS3.secret.token)
    yield endpoint
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("key", KEYS)
def test_the_signature_verifies_for_the_path_as_sent(verifying_s3: str, key: str) -> None:
    reader = SignedGets.from_settings(Settings.from_env({}))
    assert reader is not None
    assert Storage(reader).get_bytes("lepton-models", key, 100).data == b"signed right"
    assert len(_VerifyingS3.seen) == 1 and _VerifyingS3.seen[0].startswith("/lepton-models/")


def test_a_wrong_secret_is_refused(verifying_s3: str, monkeypatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    reader = SignedGets.from_settings(Settings.from_env({}))
    assert reader is not None
    with pytest.raises(AccessDeniedError, match="SignatureDoesNotMatch"):
        Storage(reader).get_bytes("lepton-models", "plain.json", 100)


def test_the_verifier_refuses_a_stale_timestamp(verifying_s3: str) -> None:
    """The verifying server is not a rubber stamp: a request signed for another time fails."""
    import requests

    request = AWSRequest("GET", f"{verifying_s3}/lepton-models/plain.json")
    S3SigV4Auth(_VerifyingS3.secret, "s3", "us-east-1").add_auth(request)
    stale = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC).strftime(SIGV4_TIMESTAMP)
    headers = {**dict(request.headers), "X-Amz-Date": stale}
    assert requests.get(request.url, headers=headers, timeout=5).status_code == 403
