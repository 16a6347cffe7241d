"""The one place where errors become HTTP statuses and JSON error bodies.

Knative retries 5xx, 404, 408, 409 and 429 and not other 4xx. Whether an error is retried
follows from its type alone (`retryable`): transient ones answer 503 (or 429 for a busy
instance); a permanent one answers a 4xx Knative does not retry, and for an inbound event, 200
with a `failed` reply event. Only an unexpected exception (a bug) answers 500 to a plain HTTP
request; an event that meets a bug gets the `failed` reply too, since a redelivery would meet it
again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from lepton_model.errors import (
    ArtifactError,
    DatasetError,
    ImageError,
    ImageTooLargeError,
    LeptonModelError,
    NotAnImageError,
    UnsupportedImageError,
)
from lepton_runtime import jsonio
from lepton_runtime.errors import (
    AccessDeniedError,
    BadRequestError,
    ConfigurationError,
    DiskUnavailableError,
    ForbiddenLocationError,
    LeptonError,
    ModelNotReadyError,
    NotFoundError,
    ObjectChangedError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    PayloadTooLargeError,
    StorageError,
    StorageUnavailableError,
    TrainingBusyError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
    is_retryable,
)
from lepton_runtime.events.outbound import binary_http, reply_event

if TYPE_CHECKING:
    from cloudevents.abstract import CloudEvent
    from werkzeug.wrappers import Response

# Knative's delivery retries these statuses (and every 5xx); a permanent error must avoid them.
KNATIVE_RETRIED_STATUSES = frozenset({404, 408, 409, 429})

# Most specific first: the first matching class decides the status.
_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (PayloadTooLargeError, 413),
    (UnsupportedMediaTypeError, 415),
    (BadRequestError, 400),
    (NotFoundError, 404),
    # Knative does not retry 401: a delivery without a valid token is dead-lettered.
    (UnauthorizedError, 401),
    (ForbiddenLocationError, 403),
    (ModelNotReadyError, 503),
    (TrainingBusyError, 429),
    (ObjectTooLargeError, 413),
    # The object is gone: permanent. 410 is not retried by Knative, unlike 404.
    (ObjectNotFoundError, 410),
    (ObjectChangedError, 412),  # Precondition Failed: Knative does not retry it
    (AccessDeniedError, 403),
    (StorageUnavailableError, 503),
    (DiskUnavailableError, 503),  # the model cache's disk full or read-only: retried
    # Unknown 4xx from the store, objects that are not the JSON they must be: permanent.
    (StorageError, 422),
    # Raised at start-up only: a process with an impossible configuration never serves.
    (ConfigurationError, 500),
    (ImageTooLargeError, 413),
    (UnsupportedImageError, 415),
    (NotAnImageError, 400),
    (ImageError, 400),
    (DatasetError, 422),
    (ArtifactError, 422),
)


def status_for(error: Exception) -> int:
    """HTTP status for any error: the table's, else 503 for a retryable type, 422 for any
    other error of ours, and 500 for an unexpected exception (a bug)."""
    for cls, status in _STATUS:
        if isinstance(error, cls):
            return status
    if is_retryable(error):
        return 503
    return 422 if isinstance(error, (LeptonError, LeptonModelError)) else 500


def error_code(error: Exception) -> str:
    return str(getattr(error, "code", "internal_error"))


def error_payload(code: str, message: str, **more: Any) -> dict[str, Any]:
    """The one error format of every server here: `{"error": {"code", "message", ...}}`."""
    return {"error": {"code": code, "message": message, **more}}


def error_body(error: Exception) -> dict[str, Any]:
    """The error format for an exception; unexpected errors never leak their text or trace."""
    if not isinstance(error, (LeptonError, LeptonModelError)):
        return error_payload("internal_error", "internal error; see the function's log")
    problems = getattr(error, "problems", None)
    extra = {"problems": list(problems)} if problems else {}
    return error_payload(error_code(error), str(error), **extra)


def v2_error_body(error: Exception) -> dict[str, Any]:
    """The Open Inference Protocol's `{"error": "<message>"}`, with our error code beside it."""
    body = error_body(error)["error"]
    return {"error": body["message"], "code": body["code"]}


@dataclass(frozen=True, slots=True)
class Answer:
    """A response as plain values: what the data plane answers and the server writes as it
    is. A werkzeug `Response` is made of it only where `main(context)` must return one."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)


def json_answer(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Answer:
    """JSON as an `Answer` (compact, no app context)."""
    extra = tuple(headers.items()) if headers else ()
    return Answer(status, jsonio.dumps(payload), (("Content-Type", "application/json"), *extra))


def to_response(answer: Answer) -> Response:
    """The werkzeug `Response` of an `Answer` (what parliament's `main(context)` returns).
    werkzeug is imported here, on first use: a process answering only `Answer`s never needs it."""
    from werkzeug.wrappers import Response

    return Response(answer.body, status=answer.status, headers=list(answer.headers))


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response without Flask's jsonify overhead (no pretty-printing, no app context)."""
    return to_response(json_answer(payload, status, headers))


def error_headers(error: Exception) -> dict[str, str] | None:
    """Headers an error's answer carries beside its body."""
    if isinstance(error, UnauthorizedError):  # RFC 6750: say which scheme is expected
        return {"WWW-Authenticate": 'Bearer error="invalid_token"'}
    if is_retryable(error):
        return {"Retry-After": "1"}
    return None


def error_answer(
    error: Exception, body: Callable[[Exception], dict[str, Any]] = error_body
) -> Answer:
    """The answer to a request that met `error`: its status, headers and body in the route's
    format (`body`)."""
    return json_answer(body(error), status_for(error), error_headers(error))


def error_response(error: Exception) -> Response:
    return to_response(error_answer(error))


def event_response(event: CloudEvent, status: int = 200) -> Response:
    """A reply event in binary content mode (attributes as ce-* headers, data as the body)."""
    headers, body = binary_http(event)
    return to_response(Answer(status, body, tuple(headers.items())))


@dataclass(frozen=True)
class Work:
    """What a routed request is (its kind, for metrics), what answers it, for an inbound
    event the `failed` reply event that answers a permanent error instead of a status, and the
    body an error is answered with on its route (the protocol's error format)."""

    kind: str
    answer: Callable[[], Response | Answer]
    failed_event: Callable[[Exception], CloudEvent] | None = None
    error_body: Callable[[Exception], dict[str, Any]] = error_body


def failure_reply(
    event_type: str, source: str, origin: str, subject: str | None = None
) -> Callable[[Exception], CloudEvent]:
    """The `failed` reply to an inbound event that met a permanent error.

    `origin` names the inbound event (its source and id, or a digest of its body), so a
    redelivery of the same event gets a reply with the same id.
    """

    def reply(error: Exception) -> CloudEvent:
        body = error_body(error)["error"]
        event_id = hashlib.sha256(f"{event_type}\n{origin}".encode()).hexdigest()[:32]
        data = {"error": body, "reason": body["message"], "event": origin}
        return reply_event(event_type, source, data, subject, event_id=event_id)

    return reply


def body_origin(body: bytes) -> str:
    """An inbound event's name when it came as plain JSON: a digest of its bytes."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def cloudevent_origin(event: CloudEvent) -> str:
    return f"{event['source']} {event['id']}"


class RequestMetrics(Protocol):
    def request(self, kind: str, status: int, seconds: float) -> None: ...


def respond(route: Callable[[], Work], metrics: RequestMetrics, logger: logging.Logger) -> Response:
    """Run one request: route it, do the work, turn any error into its answer, and count it.

    A transient error answers its 5xx/429 (Knative delivers again); a permanent error answers
    its 4xx, or 200 with the `failed` reply when the request was an event. A function's
    `main(context)` never raises past this.
    """
    result = run(route, metrics, logger)
    return to_response(result) if isinstance(result, Answer) else result


def run(
    route: Callable[[], Work], metrics: RequestMetrics, logger: logging.Logger
) -> Response | Answer:
    """`respond` without making a `Response` of what the work answers as an `Answer` (the
    server writes an `Answer` as it is)."""
    started = time.perf_counter()
    work: Work | None = None
    result: Response | Answer
    try:
        work = route()
        result = work.answer()
    except Exception as exc:
        known = isinstance(exc, (LeptonError, LeptonModelError))
        if not known:
            logger.exception("unexpected error")
        if work is not None and work.failed_event is not None and not is_retryable(exc):
            if known:
                logger.warning(
                    "event failed permanently", extra={"code": error_code(exc), "error": str(exc)}
                )
            result = event_response(work.failed_event(exc))
        else:
            result = error_answer(exc, work.error_body if work is not None else error_body)
    kind = work.kind if work is not None else "other"
    status = result.status if isinstance(result, Answer) else result.status_code
    metrics.request(kind, status, time.perf_counter() - started)
    return result
