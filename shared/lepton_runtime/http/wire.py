"""Wire formats of the inference API, kept out of the model (as MLServer codecs do).

Requests become `ImagesInput` (encoded images) or `TensorInput` (numeric arrays); predictions
become the project's image answer, a TF-Serving / KServe V1 answer or an Open Inference
Protocol (V2) answer. Two protocols are spoken:

- V1 (TF Serving, KServe V1): `{"instances": [...]}` or `{"inputs": ...}`, answered with
  `{"predictions": [[probabilities], ...]}`.
- V2 (the Open Inference Protocol of KServe, Triton and MLServer): one input tensor, either FP32
  (or any numeric type) of the model's input shape `[n, h, w, c]`, or BYTES of shape `[n]`
  holding encoded images (base64 strings in JSON, raw bytes with the binary tensor extension);
  answered with one FP32 tensor `probabilities` of shape `[n, classes]`, in JSON or, when asked
  for, as binary data after the JSON header (`Inference-Header-Content-Length`).
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from lepton_model.classifier import Prediction
from lepton_runtime.errors import BadRequestError, PayloadTooLargeError

# Magic numbers of the formats the decoder takes; used only to recognise an image sent with a
# generic content type (curl's default `application/x-www-form-urlencoded`).
_IMAGE_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF little-endian
    b"MM\x00*",  # TIFF big-endian
)


@dataclass(frozen=True)
class ImagesInput:
    """Encoded images with a name each (multipart field/file name, or the instance index)."""

    images: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class TensorInput:
    """Numeric model inputs, shape (n, h, w, c), raw 0..255 pixel values."""

    array: np.ndarray


def looks_like_image(body: bytes) -> bool:
    head = body[:16]
    if head.startswith(_IMAGE_SIGNATURES):
        return True
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def media_type(content_type: str | None) -> str:
    """`image/png; charset=x` -> `image/png`."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json_type(mtype: str) -> bool:
    return mtype == "application/json" or mtype.endswith("+json") or mtype == "text/json"


def check_batch(count: int, limit: int) -> None:
    if count == 0:
        raise BadRequestError("the request holds no images")
    if count > limit:
        raise PayloadTooLargeError(f"{count} images in one request; the limit is {limit}")


def parse_tfserving(
    payload: Any, input_shape: Sequence[int], max_batch: int
) -> ImagesInput | TensorInput:
    """TF-Serving predict JSON: `{"instances": [...]}` (row) or `{"inputs": ...}` (columnar).

    Each instance is `{"b64": "..."}` (an encoded image), a numeric array of the model's input
    shape (the channel axis may be left out for grayscale), or a one-key object naming the input.
    """
    if not isinstance(payload, dict):
        raise BadRequestError('expected a JSON object with "instances" or "inputs"')
    if "instances" in payload:
        instances = payload["instances"]
    elif "inputs" in payload:
        instances = payload["inputs"]
        if isinstance(instances, dict) and len(instances) == 1:
            instances = next(iter(instances.values()))
    else:
        raise BadRequestError('expected a JSON object with "instances" or "inputs"')
    if isinstance(instances, dict):
        instances = [instances]
    if not isinstance(instances, list):
        raise BadRequestError('"instances" must be a list')
    check_batch(len(instances), max_batch)
    instances = [_unwrap_named(item) for item in instances]
    if all(isinstance(item, dict) and "b64" in item for item in instances):
        return ImagesInput(
            tuple((str(i), _b64(item["b64"], i)) for i, item in enumerate(instances))
        )
    if any(isinstance(item, dict) for item in instances):
        raise BadRequestError('every instance must be {"b64": ...} or a numeric array, not a mix')
    try:
        array = np.asarray(instances, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise BadRequestError(
            f"instances must be numeric arrays of shape {list(input_shape)} ({exc})"
        ) from exc
    return TensorInput(model_input(array, tuple(input_shape)))


def _unwrap_named(item: Any) -> Any:
    """`{"image": {"b64": ...}}` or `{"image": [[...]]}` -> the value of its single input."""
    if isinstance(item, dict) and "b64" not in item and len(item) == 1:
        return next(iter(item.values()))
    return item


def _b64(value: Any, index: int) -> bytes:
    if not isinstance(value, str):
        raise BadRequestError(f'instance {index}: "b64" must be a base64 string')
    try:
        data = base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise BadRequestError(f"instance {index}: invalid base64 ({exc})") from exc
    if not data:
        raise BadRequestError(f'instance {index}: "b64" is empty')
    return data


def check_instance_shape(instance: Sequence[int], input_shape: tuple[int, ...]) -> None:
    """One instance's shape must be the model's input shape (the channel axis may be left out
    for grayscale)."""
    instance = tuple(instance)
    if instance == input_shape or (input_shape[-1] == 1 and instance == input_shape[:-1]):
        return
    raise BadRequestError(
        f"each instance must have shape {list(input_shape)}; got {shape_text(instance)}"
    )


def shape_text(shape: Sequence[int], most: int = 8) -> str:
    """A shape for a message: in full when short, else its first dimensions and its rank (a
    request may name a million dimensions)."""
    if len(shape) <= most:
        return str(list(shape))
    return f"[{', '.join(str(d) for d in shape[:most])}, ...] ({len(shape)} dimensions)"


def model_input(array: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """A batch of raw pixel values checked against the model's input: shape (n, *input_shape)
    (the channel axis may be left out for grayscale), finite, float32."""
    check_instance_shape(array.shape[1:], input_shape)
    if array.ndim == len(input_shape):
        array = array[..., np.newaxis]  # (n, h, w) grayscale
    if not np.isfinite(array).all():
        raise BadRequestError("instances contain NaN or infinite values")
    return np.ascontiguousarray(array, dtype=np.float32)


def model_info(name: str, version: str) -> dict[str, str]:
    return {"name": name, "version": version}


def image_answer(name: str, version: str, predictions: Sequence[Prediction]) -> dict[str, Any]:
    """The project's answer for images: model plus one prediction per image."""
    return {
        "model": model_info(name, version),
        "predictions": [p.to_dict() for p in predictions],
    }


def tfserving_answer(probabilities: np.ndarray) -> dict[str, Any]:
    """TF-Serving / KServe V1 answer: one probability row per instance (a float64 array, which
    jsonio writes as the numbers it holds)."""
    rows = np.asarray(probabilities, dtype=np.float64).round(7)
    rows[np.isnan(rows)] = 0.0
    return {"predictions": rows}


# --- Open Inference Protocol (V2) ----------------------------------------------------------------

V2_OUTPUT = "probabilities"
V2_INPUT = "image"
# The binary tensor data extension: the JSON header's length when binary data follows it.
V2_JSON_LENGTH_HEADER = "inference-header-content-length"
# V2 datatypes of numeric tensors, as little-endian numpy types (their binary layout).
_V2_NUMERIC = {
    "BOOL": "?",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


@dataclass(frozen=True)
class V2Request:
    """A V2 inference request: its id, its one input, and whether binary output was asked for."""

    id: str | None
    inputs: ImagesInput | TensorInput
    binary_output: bool


def v2_json_length(value: str | None, body_size: int) -> int | None:
    """The binary tensor extension's header: how much of the body is JSON (None: all of it)."""
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        length = -1
    if not 0 < length <= body_size:
        raise BadRequestError(
            f"{V2_JSON_LENGTH_HEADER} must be the length of the JSON part of the body "
            f"(1 to {body_size}), not {value!r}"
        )
    return length


def parse_v2_infer(
    payload: Any, binary: bytes | memoryview, input_shape: Sequence[int], max_batch: int
) -> V2Request:
    """A V2 inference request (its JSON `payload`, and the `binary` data that followed the JSON
    when the binary tensor extension was used: bytes, or a view of the body) into the model's
    one input."""
    if not isinstance(payload, dict):
        raise BadRequestError('expected a JSON object with "inputs"')
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequestError(
            f'"inputs" must hold exactly one tensor: FP32 of shape [n, {_dims(input_shape)}], '
            "or BYTES of shape [n] holding encoded images"
        )
    tensor = inputs[0]
    name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
    if not isinstance(name, str):
        raise BadRequestError('the input tensor needs a "name"')
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BadRequestError(f'input {name!r}: "shape" must be a list of non-negative integers')
    if datatype != "BYTES" and datatype not in _V2_NUMERIC:
        raise BadRequestError(
            f"input {name!r}: datatype {datatype!r} is not one of BYTES, {', '.join(_V2_NUMERIC)}"
        )
    parameters = _parameters(tensor, f"input {name!r}")
    raw: bytes | memoryview | None = None
    if "binary_data_size" in parameters:
        size = parameters["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
            raise BadRequestError(
                f"input {name!r}: binary_data_size says {size!r} bytes; "
                f"{len(binary)} bytes follow the JSON"
            )
        raw = binary
    elif binary:
        raise BadRequestError("binary data follows the JSON but no input has binary_data_size")
    elif "data" not in tensor:
        raise BadRequestError(f'input {name!r} has no "data"')
    if datatype == "BYTES":
        inputs_out: ImagesInput | TensorInput = _v2_images(
            name, shape, raw, tensor.get("data"), max_batch
        )
    else:
        # The shape is held to the batch limit and the model's input before any value is read:
        # what the values cost, and what multiplying the dimensions out costs, is then bounded
        # (60,000 dimensions of 2**63 - 1 took 13 s to multiply out, quadratically more for more).
        check_batch(shape[0] if shape else 0, max_batch)
        check_instance_shape(shape[1:], tuple(input_shape))
        array = _v2_numbers(name, datatype, math.prod(shape), raw, tensor.get("data"))
        inputs_out = TensorInput(model_input(array.reshape(shape), tuple(input_shape)))
    return V2Request(
        id=_request_id(payload.get("id")),
        inputs=inputs_out,
        binary_output=_binary_output(payload),
    )


def _dims(shape: Sequence[int]) -> str:
    return ", ".join(str(d) for d in shape)


def _parameters(item: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = item.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequestError(f'{what}: "parameters" must be an object')
    return parameters


def _request_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequestError('"id" must be a string')
    return value


def _binary_output(payload: dict[str, Any]) -> bool:
    """Whether the answer's tensor goes as binary data: asked for the request as a whole, or
    for our output by name; any other output name is not ours."""
    wanted = bool(_parameters(payload, "the request").get("binary_data_output", False))
    outputs = payload.get("outputs")
    if outputs is None:
        return wanted
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise BadRequestError('"outputs" must be a list of {"name": ...} objects')
    for output in outputs:
        if output.get("name") != V2_OUTPUT:
            raise BadRequestError(
                f"unknown output {output.get('name')!r}; the model's output is {V2_OUTPUT!r}"
            )
        parameters = _parameters(output, f"output {V2_OUTPUT!r}")
        wanted = bool(parameters.get("binary_data", wanted))
    return wanted


def _v2_images(
    name: str, shape: list[int], raw: bytes | memoryview | None, data: Any, max_batch: int
) -> ImagesInput:
    """BYTES of shape [n] (or [n, 1]): one encoded image each. The shape is held to the batch
    limit before any element is split or decoded, and no more elements than it names are read:
    a body of millions of empty elements costs nothing beyond its first `n`."""
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise BadRequestError(
            f"input {name!r}: a BYTES input holds one encoded image per element, shape [n]; "
            f"got {shape_text(shape)}"
        )
    count = shape[0]
    check_batch(count, max_batch)
    elements = _split_bytes(name, raw, count) if raw is not None else _json_bytes(name, data, count)
    return ImagesInput(tuple((str(i), element) for i, element in enumerate(elements)))


def _element_count_error(name: str, count: int, got: str) -> BadRequestError:
    plural = "" if count == 1 else "s"
    return BadRequestError(f"input {name!r}: its shape names {count} element{plural}; got {got}")


def _split_bytes(name: str, raw: bytes | memoryview, count: int) -> list[bytes]:
    """The binary layout of a BYTES tensor: each element a 4-byte little-endian length and
    its bytes; exactly `count` of them."""
    elements, offset = [], 0
    while offset < len(raw):
        if len(elements) == count:
            raise _element_count_error(name, count, "more")
        if offset + 4 > len(raw):
            raise BadRequestError(f"input {name!r}: BYTES data ends inside a length prefix")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise BadRequestError(f"input {name!r}: a BYTES element runs past the data")
        elements.append(bytes(raw[offset : offset + size]))
        offset += size
    if len(elements) != count:
        raise _element_count_error(name, count, str(len(elements)))
    return elements


def _json_bytes(name: str, data: Any, count: int) -> list[bytes]:
    """BYTES elements in JSON: strings, which for images means base64 (JSON cannot carry raw
    bytes; KServe's and MLServer's clients send images so); exactly `count` of them, counted
    before any is decoded."""
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], list):
        data = data[0]  # [n, 1] written nested
    if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
        raise BadRequestError(f'input {name!r}: BYTES "data" must be a list of base64 strings')
    if len(data) != count:
        raise _element_count_error(name, count, str(len(data)))
    elements = []
    for index, item in enumerate(data):
        try:
            elements.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise BadRequestError(
                f"input {name!r}: element {index} is not base64 ({exc}); send an encoded image "
                "in base64, or raw bytes with the binary tensor extension"
            ) from exc
        if not elements[-1]:
            raise BadRequestError(f"input {name!r}: element {index} is empty")
    return elements


def _v2_numbers(
    name: str, datatype: str, count: int, raw: bytes | memoryview | None, data: Any
) -> np.ndarray:
    """A numeric tensor's `count` values, flat, from binary data or JSON (flat or nested)."""
    if raw is not None:
        dtype = np.dtype(_V2_NUMERIC[datatype])
        if len(raw) != count * dtype.itemsize:
            raise BadRequestError(
                f"input {name!r}: {count} {datatype} values take {count * dtype.itemsize} "
                f"bytes; got {len(raw)}"
            )
        return np.frombuffer(raw, dtype=dtype).astype(np.float32)
    try:
        array = np.asarray(data, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise BadRequestError(f'input {name!r}: "data" must be {datatype} numbers ({exc})') from exc
    if array.size != count:
        raise BadRequestError(f"input {name!r}: its shape needs {count} values; got {array.size}")
    return array


def v2_infer_answer(
    name: str, version: str, request: V2Request, probabilities: np.ndarray
) -> tuple[bytes, dict[str, str]]:
    """The V2 inference answer and the headers that describe its body."""
    probabilities = np.ascontiguousarray(probabilities, dtype="<f4")
    output: dict[str, Any] = {
        "name": V2_OUTPUT,
        "datatype": "FP32",
        "shape": list(probabilities.shape),
    }
    answer: dict[str, Any] = {"model_name": name, "model_version": version}
    if request.id is not None:
        answer["id"] = request.id
    answer["outputs"] = [output]
    if not request.binary_output:
        output["data"] = probabilities.reshape(-1)
        return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), {
            "Content-Type": "application/json"
        }
    data = probabilities.tobytes()
    output["parameters"] = {"binary_data_size": len(data)}
    header = orjson.dumps(answer)
    return header + data, {
        "Content-Type": "application/octet-stream",
        V2_JSON_LENGTH_HEADER: str(len(header)),
    }


def v2_model_metadata(
    name: str,
    version: str,
    platform: str,
    input_shape: Sequence[int],
    labels: Sequence[str],
) -> dict[str, Any]:
    """`GET /v2/models/<name>`: the tensors the model takes and gives. The input may also be
    sent as BYTES of shape [-1] holding encoded images (the `parameters` say so)."""
    return {
        "name": name,
        "versions": [version],
        "platform": platform,
        "inputs": [{"name": V2_INPUT, "datatype": "FP32", "shape": [-1, *input_shape]}],
        "outputs": [{"name": V2_OUTPUT, "datatype": "FP32", "shape": [-1, len(labels)]}],
        "parameters": {
            "labels": list(labels),
            "encoded_images": f"BYTES [-1] in {V2_INPUT!r}: one JPEG, PNG, GIF, BMP, WebP "
            "or TIFF per element (base64 in JSON)",
        },
    }
