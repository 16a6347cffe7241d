"""The dead-letter sink: CloudEvents in, a log line and an object per event out, always 202."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from werkzeug.test import Client

from lepton_adapters.dead_letter_sink import MAX_BODY_BYTES, DeadLetterApp, DeadLetterStore
from lepton_runtime.errors import ConfigurationError, StorageUnavailableError
from lepton_runtime.events.outbound import binary_http
from lepton_runtime.settings import Location, Settings
from lepton_runtime.storage import Storage

RESULTS = "lepton-test-results"


class FailingStorage:
    def put_json(self, *_: Any, **__: Any) -> None:
        raise StorageUnavailableError("S3 is down")


@pytest.fixture
def settings() -> Settings:
    return Settings(results=Location(RESULTS, ""))


@pytest.fixture
def s3(mock_aws: None) -> Iterator[Any]:
    client = boto3.client("s3")
    client.create_bucket(Bucket=RESULTS)
    yield client


@pytest.fixture
def client(s3: Any, settings: Settings) -> Client:
    return Client(DeadLetterApp(DeadLetterStore(Storage(s3), settings)))


@pytest.fixture
def dead_letter() -> CloudEvent:
    """An inbound upload event as the Broker dead-letters it, with Knative's error extensions."""
    return CloudEvent(
        {
            "type": "com.amazonaws.s3.ObjectCreated:Put",
            "source": "aws:s3.us-east-1.lepton-uploads",
            "id": "req-1.host-1",
            "subject": "images/cat 1.png",
            "time": "2025-03-04T05:06:07Z",
            "knativeerrordest": "http://lepton-infer.default.svc.cluster.local",
            "knativeerrorcode": "503",
            "knativeerrordata": base64.b64encode(b'{"error": {"code": "x"}}').decode(),
        },
        {"Records": [{"s3": {"object": {"key": "images/cat+1.png"}}}]},
    )


def stored(s3: Any) -> list[dict[str, Any]]:
    listing = s3.list_objects_v2(Bucket=RESULTS).get("Contents", [])
    return [json.loads(s3.get_object(Bucket=RESULTS, Key=o["Key"])["Body"].read()) for o in listing]


def test_binary_dead_letter_is_stored_with_decoded_attributes(
    client: Client, s3: Any, dead_letter: CloudEvent
) -> None:
    headers, body = binary_http(dead_letter)
    response = client.post("/", headers=headers, data=body)
    assert response.status_code == 202
    (record,) = stored(s3)
    assert record["attributes"]["subject"] == "images/cat 1.png"
    assert record["data"]["Records"][0]["s3"]["object"]["key"] == "images/cat+1.png"


def test_structured_dead_letter_is_stored(client: Client, s3: Any, dead_letter: CloudEvent) -> None:
    headers, body = to_structured(dead_letter)
    assert client.post("/", headers=headers, data=body).status_code == 202
    (record,) = stored(s3)
    assert record["attributes"]["id"] == "req-1.host-1"


def test_knative_error_details_are_decoded(
    client: Client, s3: Any, dead_letter: CloudEvent
) -> None:
    headers, body = binary_http(dead_letter)
    client.post("/", headers=headers, data=body)
    (record,) = stored(s3)
    assert record["error"] == {
        "destination": "http://lepton-infer.default.svc.cluster.local",
        "status": "503",
        "response": '{"error": {"code": "x"}}',
    }


def test_object_name_is_stable_per_event_and_dated(
    client: Client, s3: Any, dead_letter: CloudEvent
) -> None:
    headers, body = binary_http(dead_letter)
    first = client.post("/", headers=headers, data=body).get_json()["stored_as"]
    second = client.post("/", headers=headers, data=body).get_json()["stored_as"]
    assert first == second
    assert first.startswith(f"s3://{RESULTS}/dead-letters/2025-03-04/")
    assert len(stored(s3)) == 1


def test_storage_outage_still_answers_202_and_logs(
    settings: Settings, dead_letter: CloudEvent, caplog: pytest.LogCaptureFixture
) -> None:
    client = Client(DeadLetterApp(DeadLetterStore(FailingStorage(), settings)))
    headers, body = to_binary(dead_letter)
    with caplog.at_level(logging.ERROR, logger="lepton_adapters.dead_letter_sink"):
        response = client.post("/", headers=headers, data=body)
    assert response.status_code == 202
    assert response.get_json() == {"stored_as": None}
    assert any(r.getMessage() == "dead letter" for r in caplog.records)


def test_a_body_that_is_no_cloudevent_is_refused(client: Client) -> None:
    response = client.post("/", json={"hello": "world"})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_event"


@pytest.mark.parametrize("path", ["/health/liveness", "/health/readiness"])
def test_health_paths_answer(path: str) -> None:
    assert Client(DeadLetterApp(store=None)).get(path).status_code == 200


def test_dead_letters_never_land_where_uploads_start_work() -> None:
    settings = Settings(
        images=Location("shared", "dead-letters/"), results=Location("shared", "results/")
    )
    with pytest.raises(ConfigurationError):
        DeadLetterStore(FailingStorage(), settings)


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


@pytest.mark.slow
def test_a_structured_dead_letter_of_a_million_values_is_refused_before_it_is_parsed(
    dead_letter_sink_process: dict[str, Any],
) -> None:
    """A 4 MB structured CloudEvent (the sink's body limit) of 1.4 million empty arrays, from
    anyone (the sink takes no token): the SDK parsed it three times with unbounded json and
    the process peaked at 368 MB, four at once at 935 MB."""
    values = b"[" + b"[]," * ((MAX_BODY_BYTES - 4096) // 3) + b"[]]"
    body = b'{"specversion":"1.0","id":"x","source":"hostile","type":"hostile","data":'
    started = time.monotonic()
    response = requests.post(
        dead_letter_sink_process["url"] + "/",
        data=body + values + b"}",
        headers={"Content-Type": "application/cloudevents+json"},
        timeout=30,
    )
    assert time.monotonic() - started < 5.0
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    peak = _vm_hwm_mb(dead_letter_sink_process["process"].pid)
    assert peak < 150, f"the sink peaked at {peak:.0f} MB"
