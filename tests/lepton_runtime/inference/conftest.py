"""Fixtures for the inference function: a small trained model published in moto S3, and the
service wired to it behind parliament's Flask app."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import numpy as np
import pytest

from asgi_client import ASGITestClient
from lepton_model import datasets, digits
from lepton_model.artifacts import export_artifact
from lepton_model.training import TrainingConfig, train
from lepton_runtime.http.server import build_app
from lepton_runtime.inference.service import InferenceService
from lepton_runtime.models.store import ModelStore
from lepton_runtime.settings import Location, Settings
from lepton_runtime.storage import Storage

MODEL = "digits"
VERSION = "v1"


@pytest.fixture(scope="session")
def digits_dataset() -> datasets.Dataset:
    return datasets.from_files(digits.digit_files())


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, digits_dataset) -> Path:
    """A digits CNN trained briefly (a few seconds): good enough to tell digits apart."""
    trained = train(digits_dataset, config=TrainingConfig(epochs=4, patience=2))
    directory = tmp_path_factory.mktemp("model") / VERSION
    export_artifact(trained, directory, MODEL, VERSION, digits_dataset.digest, plots=False)
    return directory


def _publish(
    s3: Any,
    model_dir: Path,
    version: str,
    bucket: str = "lepton-models",
    pointer: bool = True,
    model: str = MODEL,
) -> None:
    for path in model_dir.iterdir():
        body = path.read_bytes()
        if path.name == "metadata.json":  # the same weights, published as another version
            body = json.dumps({**json.loads(body), "version": version, "name": model}).encode()
        s3.put_object(Bucket=bucket, Key=f"{model}/{version}/{path.name}", Body=body)
    if pointer:
        s3.put_object(
            Bucket=bucket,
            Key=f"{model}/latest.json",
            Body=json.dumps({"version": version}).encode(),
        )


@pytest.fixture
def publish(s3: Any, model_dir: Path) -> Callable[..., None]:
    """Publish the trained model as `version` of `model` (digits by default), with latest.json
    unless pointer=False."""
    return lambda version, pointer=True, model=MODEL: _publish(
        s3, model_dir, version, pointer=pointer, model=model
    )


@pytest.fixture
def s3(mock_aws: None) -> Any:
    client = boto3.client("s3")
    for bucket in ("lepton-uploads", "lepton-results", "lepton-models"):
        client.create_bucket(Bucket=bucket)
    return client


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env(
        {
            "LEPTON_MODEL_CACHE_DIR": str(tmp_path / "cache"),
            "LEPTON_MAX_IMAGE_BYTES": "2000000",
            "LEPTON_MAX_BODY_BYTES": "4000000",
            "LEPTON_MAX_IMAGE_PIXELS": "4000000",
        }
    )


@pytest.fixture
def service(s3: Any, settings: Settings, publish: Callable[..., None]) -> InferenceService:
    publish(VERSION)
    service = InferenceService(settings, Storage.from_settings(settings))
    assert service.registry.refresh()
    return service


@pytest.fixture
def empty_service(s3: Any, settings: Settings) -> InferenceService:
    """The service before any model was published."""
    return InferenceService(settings, Storage.from_settings(settings))


def _client_for(service: InferenceService, settings: Settings) -> ASGITestClient:
    func = SimpleNamespace(main=service.handle, service=service)
    return ASGITestClient(build_app(func, settings))


@pytest.fixture
def client_for() -> Callable[[InferenceService, Settings], ASGITestClient]:
    """parliament's app around a service, as `lepton serve` builds it, as a test client."""
    return _client_for


@pytest.fixture
def client(service: InferenceService, settings: Settings) -> ASGITestClient:
    return _client_for(service, settings)


@pytest.fixture(scope="session")
def digit_png() -> dict[int, bytes]:
    """One rendered PNG per digit class (the last sample of each class)."""
    images, labels = digits.load_digits()
    out = {}
    for label in range(10):
        index = int(np.flatnonzero(labels == label)[-1])
        buffer = io.BytesIO()
        digits.render_digit(images[index], 28).save(buffer, "PNG")
        out[label] = buffer.getvalue()
    return out


@pytest.fixture
def upload(s3: Any) -> Iterator[Any]:
    """Put an object in the uploads bucket and return its ETag (unquoted)."""

    def put(key: str, body: bytes, bucket: str = "lepton-uploads") -> str:
        return s3.put_object(Bucket=bucket, Key=key, Body=body)["ETag"].strip('"')

    yield put


@pytest.fixture
def s3_record() -> Callable[..., dict[str, Any]]:
    """Factory of S3 notification records as AWS sends them (key URL-encoded)."""
    return _s3_record


def _s3_record(
    key: str,
    etag: str | None = None,
    bucket: str = "lepton-uploads",
    event: str = "ObjectCreated:Put",
) -> dict[str, Any]:
    """An S3 notification record as AWS sends it (key URL-encoded)."""
    from urllib.parse import quote_plus

    obj: dict[str, Any] = {"key": quote_plus(key, safe="/"), "size": 1}
    if etag:
        obj["eTag"] = etag
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-11-26T10:00:00.000Z",
        "eventName": event,
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": obj,
        },
    }


@pytest.fixture
def models_bucket(moto_endpoint: str, model_dir: Path) -> str:
    """A models bucket on the moto server (real processes reach it over HTTP) with the digits
    model published as v1."""
    bucket = f"lepton-models-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3")
    client.create_bucket(Bucket=bucket)
    store = ModelStore(Storage(client), Location(bucket))
    store.upload_version(MODEL, VERSION, model_dir)
    assert store.advance_pointer(MODEL, VERSION, {"trained_at": time.time()}).moved
    return bucket
