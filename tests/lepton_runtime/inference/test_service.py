"""The inference function over HTTP: every input kind, every error path, and events."""

from __future__ import annotations

import base64
import io
import json
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from lepton_runtime.events.outbound import binary_http, event_from_http
from lepton_runtime.inference.service import InferenceService
from lepton_runtime.settings import Settings
from lepton_runtime.storage import Storage

MODEL = "digits"
VERSION = "v1"


def post_image(client, body: bytes, content_type: str = "image/png"):
    return client.post("/", data=body, headers={"Content-Type": content_type})


def error_code(response) -> str:
    return response.get_json()["error"]["code"]


# --- images over HTTP ---------------------------------------------------------------------------


def test_png_body_is_classified_with_model_name_and_version(client, digit_png) -> None:
    response = post_image(client, digit_png[3])
    body = response.get_json()
    assert response.status_code == 200
    assert body["model"] == {"name": MODEL, "version": VERSION}
    assert body["predictions"][0]["label"] == "3"


def test_every_digit_class_is_recognised(client, digit_png) -> None:
    labels = [
        post_image(client, digit_png[d]).get_json()["predictions"][0]["label"] for d in range(10)
    ]
    assert sum(label == str(d) for d, label in enumerate(labels)) >= 9


def test_prediction_has_sorted_top_k_with_confidences(client, digit_png) -> None:
    prediction = post_image(client, digit_png[5]).get_json()["predictions"][0]
    confidences = [entry["confidence"] for entry in prediction["top_k"]]
    assert len(prediction["top_k"]) == 3
    assert confidences == sorted(confidences, reverse=True)
    assert prediction["top_k"][0] == {
        "label": prediction["label"],
        "confidence": prediction["confidence"],
    }


def test_curl_default_form_content_type_with_png_body_is_classified(client, digit_png) -> None:
    response = post_image(client, digit_png[7], "application/x-www-form-urlencoded")
    assert response.status_code == 200
    assert response.get_json()["predictions"][0]["label"] == "7"


def test_octet_stream_body_is_classified(client, digit_png) -> None:
    assert post_image(client, digit_png[1], "application/octet-stream").status_code == 200


def test_multipart_form_with_several_files_answers_in_order(client, digit_png) -> None:
    data = {"files": [(io.BytesIO(digit_png[d]), f"d{d}.png") for d in (0, 4, 8)]}
    response = client.post("/", data=data, content_type="multipart/form-data")
    labels = [p["label"] for p in response.get_json()["predictions"]]
    assert response.status_code == 200
    assert labels == ["0", "4", "8"]


def test_multipart_without_files_is_a_bad_request(client) -> None:
    response = client.post("/", data={"field": "x"}, content_type="multipart/form-data")
    assert response.status_code == 400


# --- TF-Serving / KServe V1 ---------------------------------------------------------------------


def test_tfserving_b64_instances_give_probability_rows(client, digit_png) -> None:
    payload = {"instances": [{"b64": base64.b64encode(digit_png[2]).decode()}]}
    response = client.post("/", json=payload)
    rows = response.get_json()["predictions"]
    assert response.status_code == 200
    assert len(rows) == 1 and len(rows[0]) == 10
    assert abs(sum(rows[0]) - 1.0) < 1e-4
    assert int(np.argmax(rows[0])) == 2


def test_tfserving_numeric_instances_without_channel_axis(client, service, digit_png) -> None:
    pixels = service.registry.require().decode(digit_png[6])[..., 0].tolist()
    response = client.post(f"/v1/models/{MODEL}:predict", json={"instances": [pixels, pixels]})
    rows = response.get_json()["predictions"]
    assert response.status_code == 200
    assert [int(np.argmax(r)) for r in rows] == [6, 6]


def test_tfserving_columnar_inputs_are_accepted(client, service, digit_png) -> None:
    pixels = service.registry.require().decode(digit_png[9]).tolist()
    response = client.post(f"/v1/models/{MODEL}:predict", json={"inputs": {"image": [pixels]}})
    assert response.status_code == 200
    assert int(np.argmax(response.get_json()["predictions"][0])) == 9


def test_tfserving_wrong_shape_is_a_bad_request(client) -> None:
    response = client.post(f"/v1/models/{MODEL}:predict", json={"instances": [[1, 2, 3]]})
    assert response.status_code == 400
    assert "shape" in response.get_json()["error"]["message"]


def test_tfserving_non_numeric_instances_are_a_bad_request(client) -> None:
    response = client.post(f"/v1/models/{MODEL}:predict", json={"instances": [["a"]]})
    assert response.status_code == 400


def test_curl_default_form_type_with_tfserving_json_is_understood(client, digit_png) -> None:
    body = json.dumps({"instances": [{"b64": base64.b64encode(digit_png[2]).decode()}]})
    response = client.post(
        "/", data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 200
    assert int(np.argmax(response.get_json()["predictions"][0])) == 2


def test_json_without_instances_is_a_bad_request(client) -> None:
    assert client.post("/", json={"hello": "world"}).status_code == 400


def test_v1_model_status_reports_the_live_version(client) -> None:
    body = client.get(f"/v1/models/{MODEL}").get_json()
    assert body["ready"] is True
    assert body["model_version_status"][0] == {
        "version": VERSION,
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }


def test_v1_unknown_model_is_not_found(client, digit_png) -> None:
    response = client.post("/v1/models/cats:predict", json={"instances": [[0]]})
    assert response.status_code == 404
    assert error_code(response) == "not_found"


# --- bad input ----------------------------------------------------------------------------------


def _png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"", "image/png", 400, "not_an_image"),
        (b"definitely not an image", "image/png", 400, "not_an_image"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image/png", 400, "not_an_image"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml", 415, "unsupported_image"),
        (b"hello", "text/plain", 415, "unsupported_media_type"),
        (b"<doc/>", "application/xml", 415, "unsupported_media_type"),
        (b"{not json", "application/json", 400, "bad_request"),
        (_png_header_claiming(60000, 60000), "image/png", 413, "image_too_large"),
    ],
    ids=[
        "empty",
        "text-as-png",
        "truncated-png",
        "svg",
        "text-plain",
        "xml",
        "bad-json",
        "png-bomb",
    ],
)
def test_bad_input_gets_a_clear_4xx(client, body, content_type, status, code) -> None:
    response = post_image(client, body, content_type)
    assert response.status_code == status
    assert error_code(response) == code
    assert "Traceback" not in response.get_data(as_text=True)


def test_body_over_the_limit_is_413(client) -> None:
    response = post_image(client, b"\xff" * 4_000_001, "image/jpeg")
    assert response.status_code == 413
    assert error_code(response) == "payload_too_large"


def test_too_many_images_in_one_request_is_413(client, digit_png) -> None:
    payload = {"instances": [{"b64": base64.b64encode(digit_png[1]).decode()}] * 65}
    assert client.post("/", json=payload).status_code == 413


def test_function_stays_healthy_after_bad_input(client, digit_png) -> None:
    for body in (b"", b"junk", _png_header_claiming(60000, 60000)):
        post_image(client, body)
    assert client.get("/health/readiness").status_code == 200
    assert post_image(client, digit_png[4]).status_code == 200


# --- readiness, metrics -------------------------------------------------------------------------


def test_no_model_yet_answers_503_and_readiness_is_503(
    empty_service, settings, client_for, digit_png
) -> None:
    client = client_for(empty_service, settings)
    response = post_image(client, digit_png[1])
    assert response.status_code == 503
    assert error_code(response) == "model_not_ready"
    assert client.get("/health/readiness").status_code == 503
    assert client.get("/health/liveness").status_code == 200


def test_readiness_turns_200_once_a_model_is_published(
    empty_service, settings, client_for, publish
) -> None:
    client = client_for(empty_service, settings)
    publish(VERSION)
    assert empty_service.registry.refresh()
    assert client.get("/health/readiness").status_code == 200


def test_metrics_count_requests_and_expose_the_model_version(client, digit_png) -> None:
    post_image(client, digit_png[1])
    post_image(client, b"junk")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'lepton_requests_total{function="infer",kind="image",outcome="2xx"} 1.0' in text
    assert 'lepton_requests_total{function="infer",kind="image",outcome="4xx"} 1.0' in text
    labels = f'function="infer",name="{MODEL}",runtime="litert",version="{VERSION}"'
    assert f"lepton_model_info{{{labels}}} 1.0" in text
    assert "lepton_request_duration_seconds_bucket" in text
    assert "lepton_batch_size_bucket" in text


# --- events -------------------------------------------------------------------------------------


def result_of(s3, key: str) -> dict[str, Any]:
    return json.loads(s3.get_object(Bucket="lepton-results", Key=f"{key}.json")["Body"].read())


def reply_of(response) -> CloudEvent:
    return event_from_http(response.headers, response.get_data())


def test_s3_notification_writes_a_result_and_replies_completed(
    s3_record, client, s3, upload, digit_png
) -> None:
    etag = upload("images/cat 1.png", digit_png[8])
    response = client.post("/", json={"Records": [s3_record("images/cat 1.png", etag)]})
    reply = reply_of(response)
    result = result_of(s3, "images/cat 1.png")
    assert response.status_code == 200
    assert reply["type"] == "ai.lepton.inference.completed"
    assert reply["subject"] == "images/cat 1.png"
    assert result["predictions"][0]["label"] == "8"
    assert result["source"] == {
        **result["source"],
        "bucket": "lepton-uploads",
        "key": "images/cat 1.png",
        "etag": etag,
    }
    assert reply.data["result"] == {"bucket": "lepton-results", "key": "images/cat 1.png.json"}


def test_result_object_holds_the_http_answer_plus_source(
    s3_record, client, s3, upload, digit_png
) -> None:
    upload("images/a.png", digit_png[2])
    client.post("/", json={"Records": [s3_record("images/a.png")]})
    http_answer = post_image(client, digit_png[2]).get_json()
    result = result_of(s3, "images/a.png")
    assert {k: result[k] for k in ("model", "predictions")} == http_answer


def test_binary_cloudevent_from_the_s3_adapter_is_handled(
    s3_record, client, s3, upload, digit_png
) -> None:
    etag = upload("images/b.png", digit_png[0])
    event = CloudEvent(
        {
            "type": "com.amazonaws.s3.ObjectCreated:Put",
            "source": "aws:s3.us-east-1.lepton-uploads",
            "subject": "images/b.png",
            "datacontenttype": "application/json",
        },
        s3_record("images/b.png", etag),
    )
    headers, body = to_binary(event)
    response = client.post("/", data=body, headers=headers)
    assert response.status_code == 200
    assert result_of(s3, "images/b.png")["predictions"][0]["label"] == "0"


def test_structured_cloudevent_is_handled(s3_record, client, s3, upload, digit_png) -> None:
    upload("images/c.png", digit_png[5])
    event = CloudEvent(
        {
            "type": "com.amazonaws.s3.ObjectCreated:Put",
            "source": "aws:s3.us-east-1.lepton-uploads",
            "subject": "images/c.png",
        },
        {"Records": [s3_record("images/c.png")]},
    )
    headers, body = to_structured(event)
    assert client.post("/", data=body, headers=headers).status_code == 200
    assert result_of(s3, "images/c.png")["predictions"][0]["label"] == "5"


def test_redelivered_event_returns_the_first_result_without_rewriting(
    s3_record, client, s3, upload, digit_png
) -> None:
    etag = upload("images/d.png", digit_png[3])
    event = {"Records": [s3_record("images/d.png", etag)]}
    first = reply_of(client.post("/", json=event))
    written = s3.head_object(Bucket="lepton-results", Key="images/d.png.json")["LastModified"]
    second = reply_of(client.post("/", json=event))
    again = s3.head_object(Bucket="lepton-results", Key="images/d.png.json")["LastModified"]
    assert second.data["duplicate"] is True
    assert second.data["predictions"] == first.data["predictions"]
    assert second["id"] == first["id"]
    assert written == again


def test_an_event_for_an_overwritten_object_is_stale_not_the_new_bytes(
    s3_record, client, s3, upload, digit_png
) -> None:
    old = upload("images/e.png", digit_png[1])
    upload("images/e.png", digit_png[7])  # overwritten before the first event arrives
    response = client.post("/", json={"Records": [s3_record("images/e.png", old)]})
    assert response.status_code == 200  # permanent: the newer upload's event does the work
    assert reply_of(response).data["error"]["code"] == "object_changed"
    assert "Contents" not in s3.list_objects_v2(Bucket="lepton-results")


def test_a_new_upload_of_a_key_replaces_the_older_uploads_result(
    s3_record, client, s3, upload, digit_png
) -> None:
    first = upload("images/f.png", digit_png[1])
    client.post("/", json={"Records": [s3_record("images/f.png", first)]})
    second = upload("images/f.png", digit_png[7])

    client.post("/", json={"Records": [s3_record("images/f.png", second)]})

    result = result_of(s3, "images/f.png")
    assert (result["source"]["etag"], result["predictions"][0]["label"]) == (second, "7")


def test_two_uploads_of_a_key_classified_at_once_keep_the_newer_ones_result(
    s3_record, client, service, settings, client_for, s3, upload, digit_png, monkeypatch
) -> None:
    # Replica A reads the first upload; before it writes the result the key is overwritten
    # and replica B writes the second upload's result. A must not replace it with its own.
    other = InferenceService(settings, Storage.from_settings(settings))
    assert other.registry.refresh()
    replica_b = client_for(other, settings)
    old = upload("images/g.png", digit_png[1])
    write = service.storage.put_json
    raced: list[str] = []

    def newer_upload_lands_first(bucket: str, key: str, value: Any, **options: Any) -> Any:
        if key == "images/g.png.json" and not raced:
            raced.append(upload("images/g.png", digit_png[7]))
            replica_b.post("/", json={"Records": [s3_record("images/g.png", raced[0])]})
        return write(bucket, key, value, **options)

    monkeypatch.setattr(service.storage, "put_json", newer_upload_lands_first)

    response = client.post("/", json={"Records": [s3_record("images/g.png", old)]})

    result = result_of(s3, "images/g.png")
    assert (result["source"]["etag"], result["predictions"][0]["label"]) == (raced[0], "7")
    assert reply_of(response).data["error"]["code"] == "object_changed"


def test_not_an_image_upload_replies_failed_and_records_the_error(
    s3_record, client, s3, upload
) -> None:
    etag = upload("images/notes.png", b"these are notes, not pixels")
    response = client.post("/", json={"Records": [s3_record("images/notes.png", etag)]})
    reply = reply_of(response)
    assert response.status_code == 200  # permanent: no retry storm
    assert reply["type"] == "ai.lepton.inference.failed"
    assert result_of(s3, "images/notes.png")["error"]["code"] == "not_an_image"


def test_object_gone_replies_failed_without_result(s3_record, client, s3) -> None:
    response = client.post("/", json={"Records": [s3_record("images/gone.png", "abc")]})
    assert reply_of(response)["type"] == "ai.lepton.inference.failed"
    assert reply_of(response).data["error"]["code"] == "object_not_found"
    assert "Contents" not in s3.list_objects_v2(Bucket="lepton-results")


def test_event_for_a_bucket_not_served_is_refused_before_reading(s3_record, client, s3) -> None:
    s3.create_bucket(Bucket="payroll")
    s3.put_object(Bucket="payroll", Key="images/salaries.png", Body=b"secret")
    response = client.post(
        "/", json={"Records": [s3_record("images/salaries.png", bucket="payroll")]}
    )
    # Permanent: answered 2xx with the failed reply, so Knative does not retry it.
    assert response.status_code == 200
    assert reply_of(response)["type"] == "ai.lepton.inference.failed"
    assert reply_of(response).data["error"]["code"] == "forbidden_location"
    assert "Contents" not in s3.list_objects_v2(Bucket="lepton-results")


def test_event_for_the_results_bucket_is_refused(s3_record, client) -> None:
    record = s3_record("images/x.png.json", bucket="lepton-results")
    response = client.post("/", json={"Records": [record]})
    assert reply_of(response).data["error"]["code"] == "forbidden_location"


def test_a_redelivered_refused_event_gets_the_same_failed_reply(s3_record, client) -> None:
    body = {"Records": [s3_record("images/x.png", bucket="elsewhere")]}
    first, second = (reply_of(client.post("/", json=body)) for _ in range(2))
    assert first["id"] == second["id"]


def test_an_event_of_an_unknown_shape_in_a_cloudevent_gets_a_failed_reply(client) -> None:
    event = CloudEvent(
        {"type": "com.amazonaws.s3.ObjectCreated:Put", "source": "x"}, {"no": "record"}
    )
    headers, body = binary_http(event)
    response = client.post("/", data=body, headers=headers)
    assert response.status_code == 200
    assert reply_of(response).data["error"]["code"] == "invalid_event"


def test_s3_test_event_is_acknowledged_without_reply(client) -> None:
    response = client.post(
        "/",
        json={
            "Service": "Amazon S3",
            "Event": "s3:TestEvent",
            "Time": "2026-11-26T10:00:00.000Z",
            "Bucket": "lepton-uploads",
        },
    )
    assert response.status_code == 202
    assert response.get_data() == b""


def test_several_records_give_one_reply_listing_each(
    s3_record, client, s3, upload, digit_png
) -> None:
    upload("images/e1.png", digit_png[1])
    upload("images/e2.png", digit_png[2])
    records = [s3_record("images/e1.png"), s3_record("images/e2.png")]
    reply = reply_of(client.post("/", json={"Records": records}))
    assert [r["result"]["key"] for r in reply.data["results"]] == [
        "images/e1.png.json",
        "images/e2.png.json",
    ]


def test_storage_outage_answers_503_so_knative_retries(
    publish, tmp_path, monkeypatch, client_for, s3_record
) -> None:
    settings = Settings.from_env(
        {
            "LEPTON_MODEL_CACHE_DIR": str(tmp_path / "c"),
            "LEPTON_S3_CONNECT_TIMEOUT": "0.2",
            "LEPTON_S3_MAX_ATTEMPTS": "1",
        }
    )
    publish(VERSION)
    service = InferenceService(settings, Storage.from_settings(settings))
    service.registry.refresh()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    service.storage = Storage.from_settings(settings)
    response = client_for(service, settings).post(
        "/", json={"Records": [s3_record("images/f.png")]}
    )
    assert response.status_code == 503
    assert error_code(response) == "storage_unavailable"


def test_model_published_event_loads_the_new_version(client, service, publish) -> None:
    publish("v2")
    event = CloudEvent(
        {"type": "ai.lepton.model.published", "source": "/lepton/train"},
        {"name": MODEL, "version": "v2", "promoted": True},
    )
    headers, body = to_binary(event)
    service.start()  # the loader thread (its periodic check is 30 s away)
    try:
        response = client.post("/", data=body, headers=headers)
        assert response.status_code == 202
        deadline = time.monotonic() + 10
        while service.registry.require().version != "v2" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.registry.require().version == "v2"
    finally:
        service.stop()


def test_pinned_version_is_served_whatever_latest_says(publish, tmp_path) -> None:
    publish("v1")
    publish("v2")
    settings = Settings.from_env(
        {"LEPTON_MODEL_CACHE_DIR": str(tmp_path / "c"), "LEPTON_MODEL_VERSION": "v1"}
    )
    service = InferenceService(settings, Storage.from_settings(settings))
    service.registry.refresh()
    assert service.registry.require().version == "v1"


# --- every inbound format, over HTTP ------------------------------------------------------------

EVENTS = Path(__file__).resolve().parents[2] / "data" / "events"
CREATED = [
    "s3_object_created.json",
    "s3_object_created_moto.json",
    "sqs_message.json",
    "sqs_batch.json",
    "sns_notification.json",
    "sns_lambda.json",
    "sns_in_sqs.json",
    "minio_object_created.json",
    "eventbridge_object_created.json",
    "cloudevent_s3_binary.json",
    "cloudevent_s3_structured.json",
    "knative_aws_sqs.json",
]
IGNORED = [
    "s3_object_removed.json",
    "s3_test_event.json",
    "minio_object_removed.json",
    "eventbridge_object_deleted.json",
    "knative_aws_sqs_test_event.json",
]


# The ETags the recorded notifications carry; a test uploads its own object and puts its ETag
# in their place, since the function reads exactly the object version an event names.
_RECORDED_ETAGS = ("d41d8cd98f00b204e9800998ecf8427e", "900150983cd24fb0d6963f7d28e17f72")


def post_fixture(client, name: str, etag: str | None = None):
    text = (EVENTS / name).read_text()
    for recorded in _RECORDED_ETAGS if etag else ():
        text = text.replace(recorded, etag)
    payload = json.loads(text)
    if "headers" in payload:  # an HTTP request as a CloudEvents sender makes it
        body = payload["body"]
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        return client.post("/", data=data, headers=payload["headers"])
    return client.post("/", json=payload)


@pytest.mark.parametrize("name", CREATED)
def test_every_upload_notification_format_gets_a_result(
    client, s3, upload, digit_png, name
) -> None:
    etag = upload("images/cat 1.png", digit_png[6])
    response = post_fixture(client, name, etag)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert reply_of(response)["type"] == "ai.lepton.inference.completed"
    assert result_of(s3, "images/cat 1.png")["predictions"][0]["label"] == "6"


@pytest.mark.parametrize("name", IGNORED)
def test_test_and_delete_notifications_are_acknowledged_and_ignored(client, s3, name) -> None:
    response = post_fixture(client, name)
    assert response.status_code == 202
    assert "Contents" not in s3.list_objects_v2(Bucket="lepton-results")


def test_head_on_the_root_answers_2xx_for_minio(client) -> None:
    assert client.head("/").status_code == 200
