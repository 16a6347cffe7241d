"""The hot routes answered by `InferenceService.direct`, without a Flask request: the same
answers as through `main(context)`, and only for the requests it may take."""

from __future__ import annotations

import base64
import io
import json
from types import SimpleNamespace
from typing import Any

import pytest

from asgi_client import ASGITestClient
from lepton_runtime.http.server import build_app


def _requests(png: bytes) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    b64 = base64.b64encode(png).decode()
    v2 = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}]}
    binary_header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(png) + 4},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    binary_body = binary_header + len(png).to_bytes(4, "little") + png
    json_type = {"Content-Type": "application/json"}
    return {
        "v1 predict": (
            "/v1/models/digits:predict",
            json.dumps({"instances": [{"b64": b64}]}).encode(),
            json_type,
        ),
        "v1 not json": ("/v1/models/digits:predict", b"{nope", json_type),
        "v1 no instances": ("/v1/models/digits:predict", b"{}", json_type),
        "v1 not an image": (
            "/v1/models/digits:predict",
            b'{"instances": [{"b64": "aGVsbG8="}]}',
            json_type,
        ),
        "v2 infer": ("/v2/models/digits/infer", json.dumps(v2).encode(), json_type),
        "v2 versioned infer": (
            "/v2/models/digits/versions/v1/infer",
            json.dumps(v2).encode(),
            json_type,
        ),
        "v2 other version": (
            "/v2/models/digits/versions/v9/infer",
            json.dumps(v2).encode(),
            json_type,
        ),
        "v2 binary": (
            "/v2/models/digits/infer",
            binary_body,
            {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(len(binary_header)),
            },
        ),
        "v2 bad tensor": ("/v2/models/digits/infer", b'{"inputs": [{"name": "x"}]}', json_type),
        "image": ("/", png, {"Content-Type": "image/png"}),
        "image for a model": ("/?model=digits", png, {"Content-Type": "image/png"}),
        "octet-stream": ("/", png, {"Content-Type": "application/octet-stream"}),
        "image that is not": ("/", b"GIF89a-truncated", {"Content-Type": "image/gif"}),
        "empty image": ("/", b"", {"Content-Type": "image/png"}),
    }


REQUESTS = list(_requests(b"").keys())


@pytest.fixture
def both(service, settings) -> tuple[ASGITestClient, ASGITestClient]:
    """The server as built (hot routes through `direct`), and the same server with every
    request handed to `main(context)`."""
    func = SimpleNamespace(main=service.handle, service=service)
    through_main = build_app(func, settings)
    through_main.direct = None
    return ASGITestClient(build_app(func, settings)), ASGITestClient(through_main)


@pytest.mark.parametrize("name", REQUESTS)
def test_a_hot_route_answers_as_main_does(both, digit_png, name) -> None:
    path, body, headers = _requests(digit_png[3])[name]
    direct, main = (client.post(path, data=body, headers=headers) for client in both)
    assert direct.status_code == main.status_code
    assert direct.headers.get("Content-Type") == main.headers.get("Content-Type")
    assert direct.get_data() == main.get_data()


def _counting(service) -> tuple[ASGITestClient, list[str]]:
    calls: list[str] = []

    def main(context: Any) -> Any:
        calls.append(context.request.path)
        return service.handle(context)

    return ASGITestClient(
        build_app(SimpleNamespace(main=main, service=service), service.settings)
    ), calls


@pytest.mark.parametrize("name", ["v1 predict", "v2 infer", "image", "v1 not json"])
def test_a_hot_route_is_answered_without_main(service, digit_png, name) -> None:
    client, calls = _counting(service)
    path, body, headers = _requests(digit_png[3])[name]
    client.post(path, data=body, headers=headers)
    assert calls == []


def test_requests_that_are_not_hot_routes_go_to_main(service, digit_png) -> None:
    client, calls = _counting(service)
    client.get("/v1/models")
    client.get("/v2/models/digits")
    client.post(
        "/",
        data=json.dumps({"instances": [[0.0] * 784]}),
        headers={"Content-Type": "application/json"},
    )
    client.post(
        "/",
        data=digit_png[3],
        headers={
            "Content-Type": "image/png",
            "ce-specversion": "1.0",
            "ce-id": "1",
            "ce-type": "t",
            "ce-source": "s",
        },
    )
    client.post("/", data={"file": (io.BytesIO(digit_png[3]), "3.png")})
    assert calls == ["/v1/models", "/v2/models/digits", "/", "/", "/"]


def test_a_model_not_loaded_here_goes_to_main(service, publish, digit_png) -> None:
    """Its first request loads it: that runs off the event loop, through main."""
    publish("v1", model="letters")
    client, calls = _counting(service)
    path, body, headers = _requests(digit_png[3])["v1 predict"]
    answer = client.post(path.replace("digits", "letters"), data=body, headers=headers)
    assert answer.status_code == 200
    assert calls == ["/v1/models/letters:predict"]


def test_direct_answers_are_counted_in_metrics(service, digit_png) -> None:
    client, _ = _counting(service)
    path, body, headers = _requests(digit_png[3])["image"]
    client.post(path, data=body, headers=headers)
    client.post(path, data=b"not an image", headers=headers)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'kind="image",outcome="2xx"' in metrics
    assert 'kind="image",outcome="4xx"' in metrics
