"""The one place where errors become HTTP statuses and JSON error bodies.

Knative retries 5xx, 404, 408, 409 and 429 and not other 4xx: permanent faults get a status it
does not retry, transient ones a 5xx.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from cloudevents.abstract import CloudEvent
from flask import Response

from lepton_model.errors import (
    ArtifactError,
    DatasetError,
    ImageError,
    ImageTooLargeError,
    LeptonModelError,
    NotAnImageError,
    UnsupportedImageError,
)
from lepton_runtime.emit import binary_http
from lepton_runtime.errors import (
    AccessDeniedError,
    BadRequestError,
    ConfigurationError,
    ForbiddenLocationError,
    LeptonError,
    ModelNotReadyError,
    NotFoundError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    PayloadTooLargeError,
    StorageUnavailableError,
    TrainingBusyError,
    UnsupportedMediaTypeError,
)

# Most specific first: the first matching class decides the status.
_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (PayloadTooLargeError, 413),
    (UnsupportedMediaTypeError, 415),
    (BadRequestError, 400),
    (NotFoundError, 404),
    (ForbiddenLocationError, 403),
    (ModelNotReadyError, 503),
    (TrainingBusyError, 429),
    (ObjectTooLargeError, 413),
    # The object is gone: permanent. 410 is not retried by Knative, unlike 404.
    (ObjectNotFoundError, 410),
    (AccessDeniedError, 403),
    (StorageUnavailableError, 503),
    (ConfigurationError, 500),
    (ImageTooLargeError, 413),
    (UnsupportedImageError, 415),
    (NotAnImageError, 400),
    (ImageError, 400),
    (DatasetError, 422),
    (ArtifactError, 500),
    (LeptonModelError, 500),
    (LeptonError, 500),
)


def status_for(error: Exception) -> int:
    """HTTP status for any error; unknown errors are 500."""
    for cls, status in _STATUS:
        if isinstance(error, cls):
            return status
    return 500


def error_code(error: Exception) -> str:
    return str(getattr(error, "code", "internal_error"))


def is_retryable(error: Exception) -> bool:
    """Transient faults: the caller (Knative) should deliver again."""
    return bool(getattr(error, "retryable", False)) or status_for(error) >= 500


def error_body(error: Exception) -> dict[str, Any]:
    """`{"error": {"code", "message"}}`; unexpected errors never leak their text or trace."""
    known = isinstance(error, (LeptonError, LeptonModelError))
    message = str(error) if known else "internal error; see the function's log"
    body: dict[str, Any] = {"code": error_code(error) if known else "internal_error"}
    body["message"] = message
    problems = getattr(error, "problems", None)
    if problems:
        body["problems"] = list(problems)
    return {"error": body}


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response without Flask's jsonify overhead (no pretty-printing, no app context)."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    response = Response(body, status=status, mimetype="application/json")
    if headers:
        response.headers.update(headers)
    return response


def error_response(error: Exception) -> Response:
    return json_response(error_body(error), status_for(error))


def event_response(event: CloudEvent, status: int = 200) -> Response:
    """A reply event in binary content mode (attributes as ce-* headers, data as the body)."""
    headers, body = binary_http(event)
    return Response(body, status=status, headers=headers)


Work = tuple[str, Callable[[], Response]]  # (kind of request, for metrics; what answers it)


class RequestMetrics(Protocol):
    def request(self, kind: str, status: int, seconds: float) -> None: ...


def respond(route: Callable[[], Work], metrics: RequestMetrics, logger: logging.Logger) -> Response:
    """Run one request: route it, do the work, turn any error into its JSON error response,
    and count it. A function's `main(context)` never raises past this."""
    started = time.perf_counter()
    kind = "other"
    try:
        kind, work = route()
        response = work()
    except Exception as exc:
        if not isinstance(exc, (LeptonError, LeptonModelError)):
            logger.exception("unexpected error")
        response = error_response(exc)
    metrics.request(kind, response.status_code, time.perf_counter() - started)
    return response
