"""Event parsing over real payload shapes (tests/data/events), table-driven."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cloudevents.http import CloudEvent, from_http

from lepton_runtime.errors import EventFormatError, ForbiddenLocationError
from lepton_runtime.events.inbound import (
    ObjectRef,
    authorize,
    find_records,
    looks_like_event,
    parse_cloudevent,
    parse_json,
)
from lepton_runtime.settings import Location, Settings

EVENTS = Path(__file__).resolve().parents[2] / "data" / "events"
UPLOADS = "lepton-uploads"


def load(name: str) -> Any:
    return json.loads((EVENTS / name).read_text())


def http_event(name: str) -> CloudEvent:
    """A fixture holding an HTTP request (headers + body), parsed like parliament does."""
    request = load(name)
    body = request["body"]
    raw = body if isinstance(body, str) else json.dumps(body)
    return from_http(request["headers"], raw.encode())


def s3_notification(key: str, event_name: str = "ObjectCreated:Put") -> dict[str, Any]:
    record = load("s3_object_created.json")["Records"][0]
    record["eventName"] = event_name
    record["s3"]["object"]["key"] = key
    return {"Records": [record]}


PLAIN_CREATED = [
    ("s3_object_created.json", "s3", "images/cat 1.png"),
    ("s3_object_created_moto.json", "s3", "images/cat 1.png"),
    ("sqs_message.json", "sqs", "images/cat 1.png"),
    ("sqs_batch.json", "sqs", "images/cat 1.png"),
    ("sns_notification.json", "sns", "images/cat 1.png"),
    ("sns_in_sqs.json", "sqs", "images/cat 1.png"),
    ("sns_lambda.json", "sns", "images/cat 1.png"),
    ("minio_object_created.json", "minio", "images/cat 1.png"),
    ("eventbridge_object_created.json", "eventbridge", "images/cat 1.png"),
]


@pytest.mark.parametrize(("fixture", "kind", "key"), PLAIN_CREATED)
def test_plain_json_yields_the_created_object(fixture: str, kind: str, key: str) -> None:
    event = parse_json(load(fixture))
    assert event.kind == kind
    assert [(ref.bucket, ref.key) for ref in event.refs] == [(UPLOADS, key)]


@pytest.mark.parametrize(
    ("fixture", "kind"),
    [
        ("s3_test_event.json", "s3"),
        ("s3_object_removed.json", "s3"),
        ("minio_object_removed.json", "minio"),
        ("eventbridge_object_deleted.json", "eventbridge"),
        ("sns_subscription_confirmation.json", "sns"),
    ],
)
def test_non_create_events_are_ignored_with_a_reason(fixture: str, kind: str) -> None:
    event = parse_json(load(fixture))
    assert (event.kind, event.refs, len(event.ignored)) == (kind, (), 1)


def test_a_test_event_inside_a_batch_is_ignored_next_to_the_upload() -> None:
    event = parse_json(load("sqs_batch.json"))
    assert len(event.refs) == 1
    assert event.ignored == ("s3:TestEvent for bucket lepton-uploads",)


@pytest.mark.parametrize(
    ("fixture", "kind", "keys"),
    [
        ("cloudevent_s3_binary.json", "cloudevent-s3", ["images/cat 1.png"]),
        ("cloudevent_s3_structured.json", "cloudevent-s3", ["images/cat 1.png"]),
        ("knative_aws_sqs.json", "knative-aws-sqs", ["images/cat 1.png"]),
        ("knative_aws_sqs_test_event.json", "knative-aws-sqs", []),
        ("cloudevent_model_published.json", "cloudevent", []),
    ],
)
def test_cloudevents_yield_their_objects(fixture: str, kind: str, keys: list[str]) -> None:
    event = parse_cloudevent(http_event(fixture))
    assert event.kind == kind
    assert [ref.key for ref in event.refs] == keys


def test_cloudevent_attributes_are_kept() -> None:
    event = parse_cloudevent(http_event("cloudevent_model_published.json"))
    assert (event.event_type, event.event_source, event.subject) == (
        "ai.lepton.model.published",
        "/lepton/functions/train",
        "digits",
    )
    assert event.event_id == "2f0c7a8e-5d43-4f4e-a0a5-8f8b9f3c1d22"
    assert event.data["version"] == "20240514-092107-1a2b3c4d"


def test_a_structured_cloudevent_posted_as_plain_json_is_parsed() -> None:
    event = parse_json(load("cloudevent_s3_structured.json")["body"])
    assert (event.kind, event.refs[0].key) == ("cloudevent-s3", "images/cat 1.png")


def test_cloudevent_data_sent_as_text_is_decoded() -> None:
    notification = json.dumps(load("s3_object_created.json"))
    event = CloudEvent({"type": "dev.knative.eventing.aws-sqs", "source": "test"}, notification)
    assert parse_cloudevent(event).refs[0].key == "images/cat 1.png"


def test_s3_cloudevent_without_usable_data_is_an_error() -> None:
    event = CloudEvent({"type": "com.amazonaws.s3.ObjectCreated:Put", "source": "t"}, {"x": 1})
    with pytest.raises(EventFormatError):
        parse_cloudevent(event)


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("images%2Fcat+1.png", "images/cat 1.png"),
        ("images/cat+1.png", "images/cat 1.png"),
        ("images/%C3%A9t%C3%A9.png", "images/été.png"),
        ("images/a%2Bb.png", "images/a+b.png"),
        ("images/100%25.png", "images/100%.png"),
        ("images/plain.png", "images/plain.png"),
    ],
)
def test_record_keys_are_url_decoded(encoded: str, decoded: str) -> None:
    assert parse_json(s3_notification(encoded)).refs[0].key == decoded


@pytest.mark.parametrize("key", ["images/a+b c.png", "images/100%.png", "images/x%2By.png"])
def test_eventbridge_keys_are_taken_verbatim(key: str) -> None:
    body = load("eventbridge_object_created.json")
    body["detail"]["object"]["key"] = key
    assert parse_json(body).refs[0].key == key


def test_minio_event_names_lose_their_s3_prefix() -> None:
    assert parse_json(load("minio_object_created.json")).refs[0].event_name == "ObjectCreated:Put"


def test_minio_body_without_records_uses_its_key() -> None:
    body = {"EventName": "s3:ObjectCreated:Put", "Key": "lepton-uploads/images/cat 1.png"}
    assert parse_json(body).refs[0].key == "images/cat 1.png"


def test_object_ref_fields_come_from_the_record() -> None:
    ref = parse_json(load("s3_object_created.json")).refs[0]
    assert ref == ObjectRef(
        bucket=UPLOADS,
        key="images/cat 1.png",
        size=1024,
        etag="d41d8cd98f00b204e9800998ecf8427e",
        version_id="096fKKXTRTtl3on89fVO.nfljtsv6qko",
        event_name="ObjectCreated:Put",
        event_time="2024-05-14T09:21:07.512Z",
        dedup_id=ref.dedup_id,
    )


def test_dedup_id_is_the_same_for_every_path_of_one_upload() -> None:
    ids = {
        parse_json(load(name)).refs[0].dedup_id
        for name in ("s3_object_created.json", "sns_in_sqs.json", "eventbridge_object_created.json")
    }
    assert len(ids) == 1


def test_dedup_id_differs_for_new_content() -> None:
    first = ObjectRef(UPLOADS, "images/a.png", etag="aaa")
    second = ObjectRef(UPLOADS, "images/a.png", etag="bbb")
    assert first.dedup_id != second.dedup_id


@pytest.mark.parametrize(
    "body",
    [
        {"instances": [{"b64": "aGVsbG8="}]},
        {"inputs": [[0.0]]},
        {"Records": [{"foo": "bar"}]},
        {"Records": "nope"},
        {"Body": "not json"},
        {"Type": "Notification", "TopicArn": "arn:x", "Message": "not json"},
        {"detail-type": "Object Created", "detail": {"bucket": {}}},
        [1, 2, 3],
        "text",
    ],
)
def test_unknown_or_broken_shapes_raise_event_format_error(body: Any) -> None:
    with pytest.raises(EventFormatError):
        parse_json(body)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"instances": [{"b64": "aGVsbG8="}]}, False),
        ({"signature_name": "serving_default", "inputs": [[0.0]]}, False),
        ([{"Records": []}], False),
        (load("s3_object_created.json"), True),
        (load("s3_test_event.json"), True),
        (load("sqs_message.json"), True),
        (load("sns_notification.json"), True),
        (load("minio_object_created.json"), True),
        (load("eventbridge_object_created.json"), True),
        (load("cloudevent_s3_structured.json")["body"], True),
    ],
)
def test_looks_like_event_tells_events_from_prediction_bodies(body: Any, expected: bool) -> None:
    assert looks_like_event(body) is expected


def test_find_records_keeps_records_encoded_for_forwarding() -> None:
    found = find_records(load("sns_in_sqs.json"))
    assert [record["s3"]["object"]["key"] for record in found.records] == ["images/cat+1.png"]


SETTINGS = Settings(
    images=Location(UPLOADS, "images/"),
    datasets=Location(UPLOADS, "datasets/"),
    results=Location("lepton-results", ""),
    models=Location("lepton-models", ""),
)


@pytest.mark.parametrize(
    ("bucket", "key", "role"),
    [
        (UPLOADS, "images/cat.png", "infer"),
        (UPLOADS, "datasets/digits.zip", "train"),
    ],
)
def test_authorize_accepts_served_locations(bucket: str, key: str, role: Any) -> None:
    ref = ObjectRef(bucket, key)
    assert authorize(ref, SETTINGS, role) is ref


@pytest.mark.parametrize(
    ("bucket", "key", "role"),
    [
        ("someone-elses-bucket", "images/cat.png", "infer"),
        (UPLOADS, "datasets/digits.zip", "infer"),
        (UPLOADS, "images/cat.png", "train"),
        ("lepton-results", "images/cat.png.json", "infer"),
        ("lepton-models", "digits/latest.json", "train"),
    ],
)
def test_authorize_refuses_other_locations(bucket: str, key: str, role: Any) -> None:
    with pytest.raises(ForbiddenLocationError):
        authorize(ObjectRef(bucket, key), SETTINGS, role)


def test_authorize_refuses_outputs_even_if_served() -> None:
    # Settings.check refuses this set-up at start-up; the per-event guard holds regardless.
    unsafe = Settings(images=Location(UPLOADS, ""), results=Location(UPLOADS, "results/"))
    with pytest.raises(ForbiddenLocationError, match="results"):
        authorize(ObjectRef(UPLOADS, "results/cat.png.json"), unsafe, "infer")
