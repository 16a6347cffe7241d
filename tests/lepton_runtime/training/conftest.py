"""Fixtures for the training function: moto buckets, small real datasets, the service."""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote_plus

import boto3
import numpy as np
import pytest

from asgi_client import ASGITestClient
from lepton_model import digits
from lepton_runtime.http.server import build_app
from lepton_runtime.settings import Settings
from lepton_runtime.storage import Storage
from lepton_runtime.training.service import TrainingService


@pytest.fixture(scope="session")
def digit_files() -> list[tuple[str, bytes]]:
    """30 rendered digits per class, as `<label>/<index>.png` files."""
    _, labels = digits.load_digits()
    chosen = np.concatenate([np.flatnonzero(labels == d)[:30] for d in range(10)])
    return digits.digit_files(indices=chosen)


def zip_of(files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def digits_zip(digit_files) -> bytes:
    return zip_of(digit_files)


@pytest.fixture
def make_zip() -> Callable[[list[tuple[str, bytes]]], bytes]:
    return zip_of


@pytest.fixture
def s3(mock_aws: None) -> Any:
    client = boto3.client("s3")
    for bucket in ("lepton-uploads", "lepton-results", "lepton-models"):
        client.create_bucket(Bucket=bucket)
    return client


def _settings(**env: str) -> Settings:
    return Settings.from_env({"LEPTON_MIN_ACCURACY": "0", "LEPTON_TRAIN_EPOCHS": "3", **env})


@pytest.fixture
def make_service(s3: Any) -> Callable[..., TrainingService]:
    """A training service with extra LEPTON_* settings (accuracy floor 0 by default)."""

    def make(**env: str) -> TrainingService:
        settings = _settings(**env)
        return TrainingService(settings, Storage.from_settings(settings))

    return make


@pytest.fixture
def service(make_service) -> TrainingService:
    return make_service()


@pytest.fixture
def client(service: TrainingService) -> ASGITestClient:
    func = SimpleNamespace(main=service.handle, service=service)
    return ASGITestClient(build_app(func, service.settings))


@pytest.fixture
def record() -> Callable[..., dict[str, Any]]:
    """An S3 ObjectCreated record for a key in the uploads bucket."""

    def make(key: str, bucket: str = "lepton-uploads") -> dict[str, Any]:
        return {
            "eventSource": "aws:s3",
            "awsRegion": "us-east-1",
            "eventTime": "2026-11-26T10:00:00.000Z",
            "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(key, safe="/")}},
        }

    return make


@pytest.fixture
def buckets(moto_endpoint: str) -> dict[str, str]:
    """Uniquely named uploads, results and models buckets on the shared moto server (for the
    tests that run real function processes against it)."""
    suffix = uuid.uuid4().hex[:8]
    names = {role: f"lepton-{role}-{suffix}" for role in ("uploads", "results", "models")}
    client = boto3.client("s3")
    for name in names.values():
        client.create_bucket(Bucket=name)
    return names
