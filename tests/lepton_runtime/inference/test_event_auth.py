"""The inference function behind Knative's OIDC: events need a valid token for its audience
before anything they name is read; images and TF-Serving requests stay open."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cloudevents.http import CloudEvent

from lepton_runtime.events.auth import EventAuthenticator
from lepton_runtime.events.outbound import binary_http
from lepton_runtime.inference.service import InferenceService
from lepton_runtime.settings import Settings
from lepton_runtime.storage import Storage

AUDIENCE = "lepton-infer"


class ReadRecorder:
    """The service's storage, recording every call (a refused event must make none)."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return getattr(self._storage, name)


@pytest.fixture
def secured(s3, tmp_path: Path, publish, oidc, client_for) -> tuple[Any, ReadRecorder]:
    settings = Settings.from_env(
        {"LEPTON_MODEL_CACHE_DIR": str(tmp_path / "cache"), **oidc.env(AUDIENCE)}
    )
    publish("v1")
    recorder = ReadRecorder(Storage.from_settings(settings))
    auth = EventAuthenticator.from_settings(settings)
    service = InferenceService(settings, recorder, auth=auth)  # type: ignore[arg-type]
    assert service.registry.refresh()
    return client_for(service, settings), recorder


def s3_cloudevent(key: str, etag: str) -> CloudEvent:
    return CloudEvent(
        {
            "type": "com.amazonaws.s3.ObjectCreated:Put",
            "source": "aws:s3.us-east-1.lepton-uploads",
            "subject": key,
        },
        {"s3": {"bucket": {"name": "lepton-uploads"}, "object": {"key": key, "eTag": etag}}},
    )


def results(s3) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket="lepton-results").get("Contents", [])]


def _ways_to_send(oidc) -> dict[str, Callable[[], dict[str, str]]]:
    now = int(time.time())
    return {
        "anonymous": dict,
        "expired": lambda: oidc.headers(AUDIENCE, iat=now - 900, nbf=now - 900, exp=now - 600),
        "for the training function": lambda: oidc.headers("lepton-train"),
        "from another issuer": lambda: oidc.headers(AUDIENCE, iss="https://elsewhere.invalid"),
    }


@pytest.mark.parametrize(
    "way", ["anonymous", "expired", "for the training function", "from another issuer"]
)
def test_an_event_without_a_valid_token_is_refused_before_any_read(
    secured, s3, upload, digit_png, oidc, way: str
) -> None:
    client, recorder = secured
    etag = upload("images/secret.png", digit_png[3])
    headers, body = binary_http(s3_cloudevent("images/secret.png", etag))
    recorder.calls.clear()
    response = client.post("/", data=body, headers={**headers, **_ways_to_send(oidc)[way]()})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
    assert recorder.calls == []
    assert results(s3) == []


def test_a_plain_json_notification_needs_the_token_too(
    secured, s3, upload, digit_png, s3_record
) -> None:
    client, recorder = secured
    etag = upload("images/plain.png", digit_png[2])
    recorder.calls.clear()
    response = client.post("/", json={"Records": [s3_record("images/plain.png", etag)]})
    assert response.status_code == 401
    assert recorder.calls == [] and results(s3) == []


def test_the_same_event_with_a_valid_token_is_classified(
    secured, s3, upload, digit_png, oidc
) -> None:
    client, _ = secured
    etag = upload("images/mine.png", digit_png[3])
    headers, body = binary_http(s3_cloudevent("images/mine.png", etag))
    response = client.post("/", data=body, headers={**headers, **oidc.headers(AUDIENCE)})
    assert response.status_code == 200
    assert response.headers["ce-type"] == "ai.lepton.inference.completed"
    assert results(s3) == ["images/mine.png.json"]


def test_a_model_published_event_needs_the_token(secured, oidc) -> None:
    client, _ = secured
    event = CloudEvent(
        {"type": "ai.lepton.model.published", "source": "/lepton/train"}, {"name": "digits"}
    )
    headers, body = binary_http(event)
    assert client.post("/", data=body, headers=headers).status_code == 401
    signed = {**headers, **oidc.headers(AUDIENCE)}
    assert client.post("/", data=body, headers=signed).status_code == 202


def test_images_and_tfserving_requests_stay_open(secured, digit_png) -> None:
    client, _ = secured
    image = client.post("/", data=digit_png[5], headers={"Content-Type": "image/png"})
    assert image.status_code == 200 and image.get_json()["predictions"][0]["label"] == "5"
    instances = {"instances": [{"b64": base64.b64encode(digit_png[5]).decode()}]}
    assert client.post("/", json=instances).status_code == 200
    assert client.post("/v1/models/digits:predict", json=instances).status_code == 200
