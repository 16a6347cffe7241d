"""Wire formats of the inference API, kept out of the model (as MLServer codecs do).

Requests become `ImagesInput` (encoded images) or `TensorInput` (numeric arrays); predictions
become the project's image answer or a TF-Serving answer.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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
    return TensorInput(_tensor(instances, tuple(input_shape)))


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


def _tensor(instances: list[Any], input_shape: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.asarray(instances, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise BadRequestError(
            f"instances must be numeric arrays of shape {list(input_shape)} ({exc})"
        ) from exc
    if array.ndim == len(input_shape) and input_shape[-1] == 1:
        array = array[..., np.newaxis]  # (n, h, w) grayscale
    if tuple(array.shape[1:]) != input_shape:
        raise BadRequestError(
            f"each instance must have shape {list(input_shape)}; got {list(array.shape[1:])}"
        )
    if not np.isfinite(array).all():
        raise BadRequestError("instances contain NaN or infinite values")
    return array


def model_info(name: str, version: str) -> dict[str, str]:
    return {"name": name, "version": version}


def image_answer(name: str, version: str, predictions: Sequence[Prediction]) -> dict[str, Any]:
    """The project's answer for images: model plus one prediction per image."""
    return {
        "model": model_info(name, version),
        "predictions": [p.to_dict() for p in predictions],
    }


def tfserving_answer(probabilities: np.ndarray) -> dict[str, Any]:
    """TF-Serving / KServe V1 answer: one probability row per instance."""
    rows = np.asarray(probabilities, dtype=np.float64).round(7).tolist()
    return {"predictions": [[0.0 if math.isnan(v) else v for v in row] for row in rows]}
