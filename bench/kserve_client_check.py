"""KServe's own client against a server: is it a drop-in for KServe's clients, V1 and V2?

Runs in the KServe virtualenv of `make bench` (bench/peers.py), against any base URL, with
KServe's `InferenceRESTClient` as a KServe user would call it. Prints one JSON object:
`{"checks": [{"name", "ok", "detail"}, ...]}`; exit status 0 when every check passed.
Used by bench/run.py and by tests/lepton_runtime/inference/test_clients.py.

Run: python bench/kserve_client_check.py BASE_URL MODEL IMAGE_FILE
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from PIL import Image


async def main(base_url: str, model: str, image: bytes) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    async def check(name: str, run: Callable[[], Awaitable[Any]]) -> None:
        try:
            detail = await run()
            checks.append({"name": name, "ok": True, "detail": detail})
        except Exception as exc:  # a failed check is reported, not raised
            checks.append({"name": name, "ok": False, "detail": f"{type(exc).__name__}: {exc}"})

    v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=10))
    v2 = InferenceRESTClient(RESTConfig(protocol="v2", timeout=10))

    async def expect(value: Any, wanted: Any) -> Any:
        if value != wanted:
            raise AssertionError(f"got {value!r}, wanted {wanted!r}")
        return value

    async def v1_infer() -> str:
        b64 = base64.b64encode(image).decode()
        answer = await v1.infer(base_url, {"instances": [{"b64": b64}]}, model_name=model)
        row = answer["predictions"][0]
        return f"{len(row)} probabilities, best {int(np.argmax(row))}"

    async def v1_unknown_model() -> str:
        try:
            await v1.infer(base_url, {"instances": [[0]]}, model_name=f"{model}-missing")
        except httpx.HTTPStatusError as exc:
            return await expect(exc.response.status_code, 404)
        raise AssertionError("no error for a model that is not served")

    shape = _model_input_shape(base_url, model) or [28, 28, 1]
    height, width, channels = shape
    pixels = np.asarray(
        Image.open(io.BytesIO(image))
        .convert("L" if channels == 1 else "RGB")
        .resize((width, height)),
        dtype=np.float32,
    ).reshape(1, height, width, channels)

    async def v2_infer(tensor: InferInput, binary_output: bool = False) -> str:
        parameters = {"binary_data_output": True} if binary_output else None
        request = InferRequest(
            model_name=model, infer_inputs=[tensor], request_id="check", parameters=parameters
        )
        answer = await v2.infer(base_url, request, model_name=model)
        output = answer.outputs[0]
        probabilities = output.as_numpy()
        best = int(np.argmax(probabilities[0]))
        return f"{output.name} {output.datatype} {list(probabilities.shape)}, best {best}"

    def bytes_input(binary: bool) -> InferInput:
        tensor = InferInput("image", [1], "BYTES")
        if binary:
            tensor.set_data_from_numpy(np.array([image], dtype=np.object_), binary_data=True)
        else:  # JSON cannot carry raw bytes: a BYTES element in JSON is the image in base64
            tensor.set_data_from_numpy(
                np.array([base64.b64encode(image)], dtype=np.object_), binary_data=False
            )
        return tensor

    def fp32_input(binary: bool) -> InferInput:
        tensor = InferInput("image", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels, binary_data=binary)
        return tensor

    async def v2_unknown_model() -> str:
        request = InferRequest(model_name="x", infer_inputs=[fp32_input(False)])
        try:
            await v2.infer(base_url, request, model_name=f"{model}-missing")
        except httpx.HTTPStatusError as exc:
            body = exc.response.json()
            if not isinstance(body.get("error"), str):
                raise AssertionError(f"not a V2 error body: {body}") from exc
            return await expect(exc.response.status_code, 404)
        raise AssertionError("no error for a model that is not served")

    await check("v1 is_server_live", lambda: v1.is_server_live(base_url))
    await check("v1 is_model_ready", lambda: v1.is_model_ready(base_url, model))
    await check("v1 infer b64", v1_infer)
    await check("v1 unknown model is 404", v1_unknown_model)
    await check("v2 is_server_live", lambda: v2.is_server_live(base_url))
    await check("v2 is_server_ready", lambda: v2.is_server_ready(base_url))
    await check("v2 is_model_ready", lambda: v2.is_model_ready(base_url, model))
    await check("v2 infer BYTES (binary extension)", lambda: v2_infer(bytes_input(True)))
    await check("v2 infer BYTES (JSON, base64)", lambda: v2_infer(bytes_input(False)))
    await check("v2 infer FP32 (JSON)", lambda: v2_infer(fp32_input(False)))
    await check("v2 infer FP32 (binary extension)", lambda: v2_infer(fp32_input(True)))
    await check(
        "v2 infer, binary output asked for", lambda: v2_infer(bytes_input(True), binary_output=True)
    )
    await check("v2 unknown model is 404 with a V2 error", v2_unknown_model)
    for check_result in checks:
        if check_result["ok"] and check_result["detail"] is False:
            check_result["ok"] = False  # is_*() answered False
    await v1.close()
    await v2.close()
    return checks


def _model_input_shape(base_url: str, model: str) -> list[int] | None:
    """The input shape our V1 model status carries (a KServe server does not say: None)."""
    response = httpx.get(f"{base_url.rstrip('/')}/v1/models/{model}", timeout=10)
    return response.json().get("input_shape") if response.is_success else None


if __name__ == "__main__":
    url, name, path = sys.argv[1:4]
    with open(path, "rb") as file:
        results = asyncio.run(main(url, name, file.read()))
    print(json.dumps({"checks": results}))
    sys.exit(0 if all(r["ok"] for r in results) else 1)
