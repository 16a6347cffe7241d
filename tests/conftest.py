"""Shared fixtures: fake AWS credentials everywhere, in-process moto, and a real moto server."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from moto import mock_aws as moto_mock_aws
from moto.server import ThreadedMotoServer

# --import-mode=importlib puts no test folder on sys.path: make the shared helper modules in
# tests/ (asgi_client, archive_bombs, hostile inputs) importable by their unique names.
sys.path.insert(0, str(Path(__file__).parent))

REGION = "us-east-1"


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """Fake credentials and region, no profile or config file: no test can reach real AWS."""
    empty = tmp_path_factory.getbasetemp() / "no-aws-config"
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(empty),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SQS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def mock_aws() -> Iterator[None]:
    """moto's in-process AWS: every boto3 client created inside talks to it."""
    with moto_mock_aws():
        yield


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A real moto server (S3, SQS, ...) on a free loopback port; yields its endpoint URL.

    Shared by the session: tests create uniquely named buckets and queues.
    """
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def moto_endpoint(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3 at the moto server through the standard AWS_ENDPOINT_URL variable."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    return moto_server


@pytest.fixture(scope="session")
def oidc(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """An OIDC issuer made in the tests (tests/oidc_support.py): env for a function verifying
    its tokens, and tokens for any audience."""
    from oidc_support import TestIssuer

    return TestIssuer(tmp_path_factory.mktemp("oidc"))
