"""Many models behind one inference function: which model answers which request."""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any

from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from werkzeug.test import EnvironBuilder

MODEL = "digits"


def _model_of(response: Any) -> dict[str, str]:
    return response.get_json()["model"]


def test_a_published_model_answers_its_v1_predict_route(client, publish, digit_png) -> None:
    publish("c1", model="colours")
    b64 = base64.b64encode(digit_png[3]).decode()

    response = client.post("/v1/models/colours:predict", json={"instances": [{"b64": b64}]})

    assert response.status_code == 200
    assert len(response.get_json()["predictions"][0]) == 10


def test_v1_model_status_of_another_model_names_it(client, publish) -> None:
    publish("c1", model="colours")

    body = client.get("/v1/models/colours").get_json()

    assert (body["name"], body["ready"]) == ("colours", True)
    assert body["model_version_status"][0]["version"] == "c1"


def test_v1_models_lists_every_published_model_default_first(client, publish) -> None:
    publish("c1", model="colours")

    assert client.get("/v1/models").get_json() == {"models": [MODEL, "colours"]}


def test_post_root_with_a_model_parameter_uses_that_model(client, publish, digit_png) -> None:
    publish("c1", model="colours")

    response = client.post("/?model=colours", data=digit_png[5], content_type="image/png")

    assert _model_of(response) == {"name": "colours", "version": "c1"}


def test_post_root_without_a_parameter_uses_the_default(client, publish, digit_png) -> None:
    publish("c1", model="colours")

    response = client.post("/", data=digit_png[5], content_type="image/png")

    assert _model_of(response)["name"] == MODEL


def test_a_form_names_its_model_by_parameter(client, publish, digit_png) -> None:
    publish("c1", model="colours")
    files = {"files": [(io.BytesIO(digit_png[d]), f"d{d}.png") for d in (1, 2)]}

    response = client.post("/?model=colours", data=files, content_type="multipart/form-data")

    assert _model_of(response)["name"] == "colours"
    assert len(response.get_json()["predictions"]) == 2


def test_an_unpublished_model_is_404_naming_what_is_served(client, publish, digit_png) -> None:
    publish("c1", model="colours")

    response = client.post("/?model=shapes", data=digit_png[5], content_type="image/png")

    assert response.status_code == 404
    assert "digits, colours" in response.get_json()["error"]["message"]


def test_v2_infer_serves_another_model_by_name(client, publish, digit_png) -> None:
    publish("c1", model="colours")
    request = {
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(digit_png[7]).decode()],
            }
        ]
    }

    response = client.post("/v2/models/colours/infer", json=request)

    assert response.status_code == 200
    assert (response.get_json()["model_name"], response.get_json()["model_version"]) == (
        "colours",
        "c1",
    )


def test_v2_readiness_of_an_unpublished_model_is_404(client) -> None:
    assert client.get("/v2/models/shapes/ready").status_code == 404


def test_an_upload_under_a_published_models_folder_is_classified_by_it(
    client, publish, s3_record, upload, digit_png, s3
) -> None:
    publish("c1", model="colours")
    etag = upload("images/colours/red.png", digit_png[4])

    client.post("/", json={"Records": [s3_record("images/colours/red.png", etag)]})

    result = json.loads(
        s3.get_object(Bucket="lepton-results", Key="images/colours/red.png.json")["Body"].read()
    )
    assert result["model"] == {"name": "colours", "version": "c1"}


def test_an_upload_whose_model_cannot_be_cached_is_retried_not_failed(
    client, settings, publish, s3_record, upload, digit_png, s3
) -> None:
    # The cache cannot take the model's files (a disk full or read-only plays the same way):
    # the upload must come back (503), not be answered with a `failed` event and lost.
    publish("c1", model="colours")
    blocked = settings.model_cache_dir / "colours"
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_bytes(b"not a folder")
    etag = upload("images/colours/red.png", digit_png[4])
    event = {"Records": [s3_record("images/colours/red.png", etag)]}

    refused = client.post("/", json=event)
    blocked.unlink()
    redelivered = client.post("/", json=event)

    assert refused.status_code == 503, refused.get_data(as_text=True)
    assert refused.headers["Retry-After"] == "1"
    assert refused.get_json()["error"]["code"] == "disk_unavailable"
    assert redelivered.headers["ce-type"] == "ai.lepton.inference.completed"
    result = json.loads(
        s3.get_object(Bucket="lepton-results", Key="images/colours/red.png.json")["Body"].read()
    )
    assert result["model"] == {"name": "colours", "version": "c1"}


def test_an_upload_under_any_other_folder_is_classified_by_the_default(
    client, publish, s3_record, upload, digit_png, s3
) -> None:
    publish("c1", model="colours")
    etag = upload("images/holiday/cat.png", digit_png[4])

    client.post("/", json={"Records": [s3_record("images/holiday/cat.png", etag)]})

    result = json.loads(
        s3.get_object(Bucket="lepton-results", Key="images/holiday/cat.png.json")["Body"].read()
    )
    assert result["model"]["name"] == MODEL


def test_a_published_event_moves_a_loaded_model_to_its_new_version(
    client, service, publish, digit_png
) -> None:
    publish("c1", model="colours")
    assert service.models.require("colours").version == "c1"
    publish("c2", model="colours")
    headers, body = to_binary(
        CloudEvent(
            {"type": "ai.lepton.model.published", "source": "/lepton/train"},
            {"name": "colours", "version": "c2", "promoted": True},
        )
    )
    service.start()
    try:
        assert client.post("/", data=body, headers=headers).status_code == 202
        deadline = time.monotonic() + 10
        while service.models.require("colours").version != "c2" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.models.require("colours").version == "c2"
        assert service.registry.require().version == "v1"  # the default untouched
    finally:
        service.stop()


def test_a_model_not_loaded_yet_is_loaded_off_the_event_loop(service, publish) -> None:
    publish("c1", model="colours")
    predict = EnvironBuilder(path="/v1/models/colours:predict", method="POST").get_request()
    by_parameter = EnvironBuilder(
        path="/", method="POST", query_string="model=colours", content_type="image/png"
    ).get_request()

    assert not service.inline(predict) and not service.inline(by_parameter)
    service.models.require("colours")
    assert service.inline(predict) and service.inline(by_parameter)
