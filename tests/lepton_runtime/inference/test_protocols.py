"""KServe V1 and the Open Inference Protocol (V2) over HTTP, request by request (the real
clients of both protocols are in test_clients.py)."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest

MODEL = "digits"
VERSION = "v1"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bytes_tensor(*images: bytes, name: str = "image") -> dict:
    return {
        "name": name,
        "shape": [len(images)],
        "datatype": "BYTES",
        "data": [b64(i) for i in images],
    }


def pixels(service, png: bytes) -> np.ndarray:
    classifier = service.registry.current
    return classifier.decode(png)[np.newaxis]


def v2_error(response) -> str:
    body = response.get_json()
    assert isinstance(body["error"], str), body
    return body["code"]


# --- V1 -----------------------------------------------------------------------------------------


def test_get_root_answers_v1_liveness_and_still_describes_the_function(client) -> None:
    body = client.get("/").get_json()
    assert body["status"] == "alive"
    assert body["function"] == "infer"
    assert body["model"] == {"name": MODEL, "version": VERSION}


def test_get_root_is_alive_before_any_model(empty_service, settings, client_for) -> None:
    response = client_for(empty_service, settings).get("/")
    assert response.status_code == 200
    assert response.get_json()["status"] == "alive"


def test_v1_lists_the_model(client) -> None:
    assert client.get("/v1/models").get_json() == {"models": [MODEL]}


def test_v1_model_not_ready_is_503_with_ready_false(empty_service, settings, client_for) -> None:
    response = client_for(empty_service, settings).get(f"/v1/models/{MODEL}")
    assert response.status_code == 503
    assert response.get_json()["ready"] is False


# --- V2: health and metadata ---------------------------------------------------------------------


def test_v2_server_live_and_ready(client) -> None:
    assert client.get("/v2/health/live").get_json() == {"live": True}
    assert client.get("/v2/health/ready").get_json() == {"ready": True}


def test_v2_server_not_ready_before_any_model(empty_service, settings, client_for) -> None:
    client = client_for(empty_service, settings)
    assert client.get("/v2/health/live").status_code == 200
    response = client.get("/v2/health/ready")
    assert response.status_code == 503
    assert response.get_json() == {"ready": False}
    response = client.get(f"/v2/models/{MODEL}/ready")
    assert (response.status_code, response.get_json()["ready"]) == (503, False)


def test_v2_server_metadata(client) -> None:
    body = client.get("/v2").get_json()
    assert body["name"] == "lepton-infer"
    assert "binary_tensor_data" in body["extensions"]


def test_v2_model_metadata_describes_the_tensors(client, service) -> None:
    body = client.get(f"/v2/models/{MODEL}").get_json()
    classifier = service.registry.current
    assert body["name"] == MODEL
    assert body["versions"] == [VERSION]
    assert body["inputs"] == [
        {"name": "image", "datatype": "FP32", "shape": [-1, *classifier.input_shape]}
    ]
    assert body["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert body["parameters"]["labels"] == [str(d) for d in range(10)]


def test_v2_model_ready_and_versioned_routes(client) -> None:
    assert client.get(f"/v2/models/{MODEL}/ready").get_json() == {"name": MODEL, "ready": True}
    assert client.get(f"/v2/models/{MODEL}/versions/{VERSION}/ready").status_code == 200
    assert client.get(f"/v2/models/{MODEL}/versions/{VERSION}").status_code == 200
    response = client.get(f"/v2/models/{MODEL}/versions/v9")
    assert (response.status_code, v2_error(response)) == (404, "not_found")


# --- V2: infer ----------------------------------------------------------------------------------


def test_v2_infer_bytes_tensor_of_base64_images(client, digit_png) -> None:
    request = {"id": "r1", "inputs": [bytes_tensor(digit_png[3], digit_png[7])]}
    response = client.post(f"/v2/models/{MODEL}/infer", json=request)
    body = response.get_json()
    assert response.status_code == 200
    assert (body["model_name"], body["model_version"], body["id"]) == (MODEL, VERSION, "r1")
    (output,) = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == (
        "probabilities",
        "FP32",
        [2, 10],
    )
    rows = np.asarray(output["data"]).reshape(2, 10)
    assert list(rows.argmax(axis=1)) == [3, 7]
    assert np.allclose(rows.sum(axis=1), 1.0, atol=1e-4)


def test_v2_infer_fp32_tensor_matches_the_image_route(client, service, digit_png) -> None:
    batch = pixels(service, digit_png[5])
    request = {
        "inputs": [
            {
                "name": "x",
                "shape": list(batch.shape),
                "datatype": "FP32",
                "data": batch.ravel().tolist(),
            }
        ]
    }
    v2 = client.post(f"/v2/models/{MODEL}/infer", json=request).get_json()
    v1 = client.post(
        f"/v1/models/{MODEL}:predict", json={"instances": [{"b64": b64(digit_png[5])}]}
    )
    assert np.allclose(v2["outputs"][0]["data"], v1.get_json()["predictions"][0], atol=1e-6)
    assert "id" not in v2


def test_v2_infer_nested_uint8_data_without_channel_axis(client, service, digit_png) -> None:
    batch = pixels(service, digit_png[2])[..., 0].astype(np.uint8)
    request = {
        "inputs": [
            {"name": "x", "shape": list(batch.shape), "datatype": "UINT8", "data": batch.tolist()}
        ]
    }
    body = client.post(f"/v2/models/{MODEL}/infer", json=request).get_json()
    assert int(np.argmax(body["outputs"][0]["data"])) == 2


def binary_request(header: dict, raw: bytes, client, **extra_headers):
    header_bytes = json.dumps(header).encode()
    return client.post(
        f"/v2/models/{MODEL}/infer",
        data=header_bytes + raw,
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header_bytes)),
            **extra_headers,
        },
    )


def test_v2_binary_extension_bytes_in_and_binary_output(client, digit_png) -> None:
    raw = b"".join(struct.pack("<I", len(digit_png[d])) + digit_png[d] for d in (1, 4))
    header = {
        "inputs": [
            {
                "name": "image",
                "shape": [2],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    response = binary_request(header, raw, client)
    assert response.status_code == 200
    length = int(response.headers["Inference-Header-Content-Length"])
    meta = json.loads(response.data[:length])
    (output,) = meta["outputs"]
    assert output["parameters"]["binary_data_size"] == 2 * 10 * 4
    rows = np.frombuffer(response.data[length:], dtype="<f4").reshape(output["shape"])
    assert list(rows.argmax(axis=1)) == [1, 4]


def test_v2_binary_extension_fp32_in(client, service, digit_png) -> None:
    batch = pixels(service, digit_png[8]).astype("<f4")
    header = {
        "inputs": [
            {
                "name": "image",
                "shape": list(batch.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": batch.nbytes},
            }
        ]
    }
    body = binary_request(header, batch.tobytes(), client).get_json()
    assert int(np.argmax(body["outputs"][0]["data"])) == 8


# --- V2: errors in V2's format ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_body", "status", "code"),
    [
        ({"inputs": []}, 400, "bad_request"),
        (
            {"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]},
            400,
            "bad_request",
        ),
        (
            {
                "inputs": [
                    {"name": "a", "shape": [1], "datatype": "BYTES", "data": [b64(b"no image")]}
                ]
            },
            400,
            "not_an_image",
        ),
        (
            {"inputs": [{"name": "a", "shape": [2], "datatype": "BYTES", "data": [b64(b"x")]}]},
            400,
            "bad_request",
        ),
        (
            {"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": [b64(b"x")] * 2}]},
            400,
            "bad_request",
        ),
        (
            {"inputs": [{"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]},
            400,
            "bad_request",
        ),
        (
            {"inputs": [{"name": "a", "shape": [1], "datatype": "COMPLEX", "data": [1]}]},
            400,
            "bad_request",
        ),
        (
            {
                "inputs": [
                    {"name": "a", "shape": [100], "datatype": "BYTES", "data": ["eA=="] * 100}
                ]
            },
            413,
            "payload_too_large",
        ),
        ({"inputs": [bytes_tensor(b"x")], "outputs": [{"name": "logits"}]}, 400, "bad_request"),
        ([1, 2], 400, "bad_request"),
    ],
)
def test_v2_bad_requests_are_typed_v2_errors(client, request_body, status, code) -> None:
    response = client.post(f"/v2/models/{MODEL}/infer", json=request_body)
    assert response.status_code == status, response.get_data(as_text=True)
    assert v2_error(response) == code


def test_v2_unknown_model_and_route_are_404(client) -> None:
    for response in (
        client.post("/v2/models/cats/infer", json={"inputs": []}),
        client.get("/v2/models/cats/ready"),
        client.get("/v2/nowhere"),
    ):
        assert (response.status_code, v2_error(response)) == (404, "not_found")


def test_v2_binary_sizes_that_disagree_are_400(client, digit_png) -> None:
    raw = struct.pack("<I", len(digit_png[1])) + digit_png[1]
    header = {
        "inputs": [
            {"name": "i", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 3}}
        ]
    }
    assert v2_error(binary_request(header, raw, client)) == "bad_request"
    assert (
        binary_request(header, raw, client, **{"Inference-Header-Content-Length": "x"}).status_code
        == 400
    )


def test_v2_binary_elements_beyond_the_shape_are_400(client, digit_png) -> None:
    element = struct.pack("<I", len(digit_png[1])) + digit_png[1]
    raw = element * 2
    header = {
        "inputs": [
            {
                "name": "i",
                "shape": [1],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(raw)},
            }
        ]
    }
    response = binary_request(header, raw, client)
    assert (response.status_code, v2_error(response)) == (400, "bad_request")
    assert "its shape names 1 element; got more" in response.get_json()["error"]


def test_v2_infer_before_any_model_is_a_retryable_503(
    empty_service, settings, client_for, digit_png
) -> None:
    client = client_for(empty_service, settings)
    response = client.post(
        f"/v2/models/{MODEL}/infer", json={"inputs": [bytes_tensor(digit_png[1])]}
    )
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert v2_error(response) == "model_not_ready"


def test_v2_requests_are_counted_in_metrics(client, digit_png) -> None:
    client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [bytes_tensor(digit_png[1])]})
    text = client.get("/metrics").get_data(as_text=True)
    assert 'lepton_requests_total{function="infer",kind="v2",outcome="2xx"} 1.0' in text
