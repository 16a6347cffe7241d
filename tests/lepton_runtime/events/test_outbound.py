"""Outbound CloudEvents: the S3 adapter mapping, reply events, HTTP binary mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cloudevents.exceptions import MissingRequiredFields
from cloudevents.http import from_http

from lepton_runtime.errors import EventFormatError, PayloadTooLargeError
from lepton_runtime.events.inbound import parse_cloudevent
from lepton_runtime.events.outbound import (
    INFERENCE_COMPLETED,
    INFERENCE_FAILED,
    MODEL_PUBLISHED,
    REPLY_TYPES,
    TRAINING_FAILED,
    binary_http,
    event_from_http,
    reply_event,
    s3_object_event,
    structured_http,
)

EVENTS = Path(__file__).resolve().parents[2] / "data" / "events"


def record(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())["Records"][0]


def test_s3_event_follows_the_adapter_mapping() -> None:
    event = s3_object_event(record("s3_object_created.json"))
    assert {name: event[name] for name in ("id", "source", "type", "time")} == {
        "id": "C3D13FE58DE4C810.FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD",
        "source": "aws:s3.eu-west-1.lepton-uploads",
        "type": "com.amazonaws.s3.ObjectCreated:Put",
        "time": "2024-05-14T09:21:07.512Z",
    }


def test_s3_event_data_is_the_record_as_json() -> None:
    source = record("s3_object_created.json")
    event = s3_object_event(source)
    assert (event["datacontenttype"], event.get_data()) == ("application/json", source)


def test_s3_event_subject_is_the_decoded_key() -> None:
    assert s3_object_event(record("s3_object_created_moto.json"))["subject"] == "images/cat 1.png"


def test_minio_event_type_drops_the_s3_prefix_and_uses_the_fallback_region() -> None:
    event = s3_object_event(record("minio_object_created.json"), region="us-east-1")
    assert (event["type"], event["source"]) == (
        "com.amazonaws.s3.ObjectCreated:Put",
        "minio:s3.us-east-1.lepton-uploads",
    )


def test_records_without_response_ids_get_a_stable_id() -> None:
    moto_record = record("s3_object_created_moto.json")
    assert s3_object_event(moto_record)["id"] == s3_object_event(dict(moto_record))["id"]


def test_extensions_are_added() -> None:
    event = s3_object_event(record("s3_object_created.json"), extensions={"cluster": "dev"})
    assert event["cluster"] == "dev"


def test_s3_event_round_trips_through_binary_http() -> None:
    headers, body = binary_http(s3_object_event(record("s3_object_created_moto.json")))
    parsed = parse_cloudevent(from_http(headers, body))
    assert (parsed.kind, parsed.refs[0].key) == ("cloudevent-s3", "images/cat 1.png")


@pytest.mark.parametrize(
    ("subject", "header"),
    [
        ("images/cat 1.png", "images/cat%201.png"),
        ("images/été.png", "images/%C3%A9t%C3%A9.png"),
        ("images/日本.png", "images/%E6%97%A5%E6%9C%AC.png"),
        ('images/"100%".png', "images/%22100%25%22.png"),
    ],
)
def test_binary_header_values_are_percent_encoded(subject: str, header: str) -> None:
    headers, _ = binary_http(reply_event(INFERENCE_COMPLETED, "/t", {}, subject))
    assert headers["ce-subject"] == header


def test_structured_http_carries_everything_in_the_body() -> None:
    headers, body = structured_http(reply_event(MODEL_PUBLISHED, "/t", {"version": "v1"}))
    assert headers["content-type"].startswith("application/cloudevents+json")
    assert json.loads(body)["data"] == {"version": "v1"}


@pytest.mark.parametrize(
    "event_type", [INFERENCE_COMPLETED, INFERENCE_FAILED, MODEL_PUBLISHED, TRAINING_FAILED]
)
def test_reply_events_are_json_events_of_their_type(event_type: str) -> None:
    headers, body = binary_http(reply_event(event_type, "/lepton/infer", {"ok": True}, "k"))
    parsed = from_http(headers, body)
    assert (parsed["type"], parsed["datacontenttype"], parsed.get_data()) == (
        event_type,
        "application/json",
        {"ok": True},
    )


def test_reply_types_are_the_projects_four() -> None:
    assert {
        "ai.lepton.inference.completed",
        "ai.lepton.inference.failed",
        "ai.lepton.model.published",
        "ai.lepton.training.failed",
    } == REPLY_TYPES


def test_reply_event_keeps_a_given_id() -> None:
    assert reply_event(INFERENCE_COMPLETED, "/t", {}, event_id="abc")["id"] == "abc"


def test_reply_event_refuses_an_inbound_s3_type() -> None:
    with pytest.raises(ValueError, match="trigger"):
        reply_event("com.amazonaws.s3.ObjectCreated:Put", "/t", {})


_STRUCTURED = {"content-type": "application/cloudevents+json"}


def test_a_structured_event_is_parsed_as_the_sdk_parses_it() -> None:
    """The envelope is parsed by jsonio; the SDK still checks and decodes the attributes."""
    envelope = {"specversion": "1.0", "id": "1", "source": "s", "type": "t", "subject": "k"}
    event = event_from_http(_STRUCTURED, json.dumps({**envelope, "data": {"a": [1]}}).encode())
    assert (event["id"], event["subject"], event.get_data()) == ("1", "k", {"a": [1]})
    encoded = event_from_http(_STRUCTURED, json.dumps({**envelope, "data_base64": "eHl6"}).encode())
    assert encoded.get_data() == b"xyz"
    del envelope["id"]
    with pytest.raises(MissingRequiredFields, match="id"):  # the SDK's own check
        event_from_http(_STRUCTURED, json.dumps(envelope).encode())


def test_a_structured_event_over_the_value_bound_is_refused_before_the_sdk_parses_it() -> None:
    body = b'{"specversion":"1.0","id":"1","source":"s","type":"t","data":[' + b"0," * 99 + b"0]}"
    with pytest.raises(PayloadTooLargeError):
        event_from_http(_STRUCTURED, body, max_values=100)


def test_a_structured_event_with_an_attribute_that_is_not_a_scalar_is_refused() -> None:
    body = b'{"specversion":"1.0","id":"1","source":"s","type":"t","pad":[[],[]]}'
    with pytest.raises(EventFormatError):
        event_from_http(_STRUCTURED, body)


def test_binary_data_over_the_value_bound_is_left_as_it_came() -> None:
    """Refused where the data is read (inbound, after the event is authenticated)."""
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s", "ce-type": "t"}
    body = b"[" + b"0," * 99 + b"0]"
    assert event_from_http(headers, body, max_values=100).get_data() == body
    assert event_from_http(headers, body, max_values=1000).get_data() == [0] * 100
