"""The training function behind Knative's OIDC: every POST (events, dataset requests and
inline arrays alike: each reads a dataset or publishes a model) needs a valid token."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from asgi_client import ASGITestClient
from lepton_runtime.events.auth import EventAuthenticator
from lepton_runtime.http.server import build_app
from lepton_runtime.settings import Settings
from lepton_runtime.storage import Storage
from lepton_runtime.training.service import TrainingService

AUDIENCE = "lepton-train"


@pytest.fixture
def secured(s3, oidc) -> ASGITestClient:
    settings = Settings.from_env(
        {"LEPTON_MIN_ACCURACY": "0", "LEPTON_TRAIN_EPOCHS": "1", **oidc.env(AUDIENCE)}
    )
    service = TrainingService(
        settings, Storage.from_settings(settings), auth=EventAuthenticator.from_settings(settings)
    )
    return ASGITestClient(
        build_app(SimpleNamespace(main=service.handle, service=service), settings)
    )


def models(s3: Any) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket="lepton-models").get("Contents", [])]


@pytest.mark.parametrize(
    "body",
    [
        {"dataset": "s3://lepton-uploads/datasets/digits.zip"},
        {"x_train": [[[0]], [[1]]], "y_train": [0, 1]},
        {
            "Records": [
                {
                    "eventName": "ObjectCreated:Put",
                    "s3": {
                        "bucket": {"name": "lepton-uploads"},
                        "object": {"key": "datasets/digits.zip"},
                    },
                }
            ]
        },
    ],
    ids=["dataset request", "inline arrays", "notification"],
)
def test_an_anonymous_post_is_refused_and_nothing_trains(
    secured, s3, digits_zip, body: dict[str, Any]
) -> None:
    s3.put_object(Bucket="lepton-uploads", Key="datasets/digits.zip", Body=digits_zip)
    response = secured.post("/", json=body)
    assert response.status_code == 401
    assert models(s3) == []


def test_a_token_for_the_inference_function_is_refused(secured, oidc) -> None:
    response = secured.post(
        "/", json={"dataset": "datasets/none.zip"}, headers=oidc.headers("lepton-infer")
    )
    assert response.status_code == 401


def test_a_signed_request_is_served(secured, s3, oidc, record) -> None:
    # An image of a folder dataset: acknowledged, nothing to train (cheap, but past the check).
    body = {"Records": [record("datasets/set/7/a.png")]}
    response = secured.post("/", json=body, headers=oidc.headers(AUDIENCE))
    assert response.status_code == 202


def test_describe_stays_open(secured) -> None:
    assert secured.get("/").status_code == 200
