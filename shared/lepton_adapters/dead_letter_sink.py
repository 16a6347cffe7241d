"""The dead-letter sink: every event Knative gave up delivering, logged and kept.

The Broker and the Triggers send an event to `lepton-dead-letters` after its last retry failed.
Each one becomes a JSON log line (its attributes, the `knativeerror*` extensions Knative adds:
the destination, the last HTTP status and the decoded start of the error body) and, when
storage answers, an object `dead-letters/<date>/<digest>.json` in the results bucket that a
person can inspect and replay. The object name is derived from the event's source and id, so a
redelivered dead letter overwrites itself instead of piling up.

Storage failures never fail the request (202 either way): the log line is the record of last
resort, and a 5xx would only make the Broker retry into the same outage. Only a body that is no
CloudEvent at all gets a 400.

Run it with `python -m lepton_adapters.dead_letter_sink` (port $PORT, default 8080). GET
/health/liveness and /health/readiness answer 200; SIGTERM stops it after the request in flight.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from cloudevents.abstract import CloudEvent
from cloudevents.exceptions import GenericException as CloudEventError
from werkzeug.wrappers import Request, Response

from lepton_adapters.wsgi import json_error_server
from lepton_runtime import jsonio
from lepton_runtime.errors import (
    BadRequestError,
    ConfigurationError,
    LeptonError,
    PayloadTooLargeError,
)
from lepton_runtime.events.outbound import event_from_http
from lepton_runtime.http.responses import error_payload, json_response
from lepton_runtime.settings import Location, Settings

log = logging.getLogger("lepton_adapters.dead_letter_sink")

DEAD_LETTER_PREFIX = "dead-letters/"
MAX_BODY_BYTES = 4 * 1024 * 1024
_ERROR_EXCERPT_CHARS = 1024


class DeadLetterStore:
    """Where dead letters are kept: the results bucket, never a location that triggers work."""

    def __init__(self, storage: Any, settings: Settings) -> None:
        self.storage = storage
        self.location = Location(settings.results.bucket, DEAD_LETTER_PREFIX)
        if any(self.location.overlaps(t) for t in settings.trigger_locations):
            raise ConfigurationError(
                f"{self.location} overlaps an upload location; dead letters would start work"
            )

    def key(self, attributes: Mapping[str, Any]) -> str:
        """`dead-letters/<event date>/<digest of source and id>.json`: stable per event."""
        identity = f"{attributes.get('source', '')}\n{attributes.get('id', '')}"
        digest = hashlib.sha256(identity.encode()).hexdigest()[:32]
        day = str(attributes.get("time") or "")[:10] or datetime.now(UTC).strftime("%Y-%m-%d")
        return self.location.key(f"{day}/{digest}.json")

    def put(self, record: Mapping[str, Any]) -> str:
        key = self.key(record["attributes"])
        self.storage.put_json(self.location.bucket, key, dict(record))
        return key


def describe(event: CloudEvent) -> dict[str, Any]:
    """What to keep of a dead letter (as `event_from_http` parsed it, binary-mode attribute
    values decoded): attributes, Knative's error details, and the data."""
    attributes = {name: _plain(value) for name, value in event.get_attributes().items()}
    error = {
        "destination": attributes.get("knativeerrordest"),
        "status": attributes.get("knativeerrorcode"),
        "response": _decoded_error(attributes.get("knativeerrordata")),
    }
    data = event.get_data()
    if isinstance(data, bytes | bytearray):
        try:
            data = jsonio.loads(bytes(data), what="the dead letter's data")
        except BadRequestError:
            data = {"base64": base64.b64encode(bytes(data)).decode()}
    return {"attributes": attributes, "error": error, "data": data}


class DeadLetterApp:
    """WSGI app: POST a CloudEvent (binary or structured) to have it logged and stored."""

    def __init__(self, store: DeadLetterStore | None) -> None:
        self.store = store

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        return self.respond(Request(environ))(environ, start_response)

    def respond(self, request: Request) -> Response:
        if request.method == "GET" and request.path in ("/health/liveness", "/health/readiness"):
            return json_response({"status": "ok"}, 200)
        if request.method != "POST":
            return json_response(error_payload("method_not_allowed", "POST a CloudEvent"), 405)
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return json_response(error_payload("payload_too_large", "dead letter too large"), 413)
        try:
            # Parsed within jsonio's value bound: the SDK alone parsed a structured event three
            # times with unbounded json (a 4 MB dead letter cost this process 340 MB).
            event = event_from_http(request.headers, request.get_data(cache=False))
        except PayloadTooLargeError as exc:
            return json_response(error_payload("payload_too_large", str(exc)), 413)
        except (CloudEventError, BadRequestError, ValueError) as exc:
            return json_response(error_payload("invalid_event", f"not a CloudEvent: {exc}"), 400)
        record = describe(event)
        stored = self._store(record)
        log.error(
            "dead letter",
            extra={"event": record["attributes"], "error": record["error"], "stored_as": stored},
        )
        return json_response({"stored_as": stored}, 202)

    def _store(self, record: Mapping[str, Any]) -> str | None:
        if self.store is None:
            return None
        try:
            key = self.store.put(record)
        except (LeptonError, OSError) as exc:
            log.warning("cannot store a dead letter", extra={"error": str(exc)})
            return None
        return f"s3://{self.store.location.bucket}/{key}"


def serve(
    app: DeadLetterApp, port: int, threads: int = 4, grace: float = 10.0, host: str = "0.0.0.0"
) -> None:
    """Serve until SIGTERM/SIGINT, then let requests in flight finish (up to `grace` s)."""
    server = json_error_server(
        app, max_body_bytes=MAX_BODY_BYTES, host=host, port=port, threads=threads, ident="lepton"
    )

    def on_signal(*_: Any) -> None:
        raise KeyboardInterrupt  # waitress' run() closes its listener and returns on it

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    log.info("dead-letter sink listening", extra={"port": server.effective_port})
    server.run()
    server.task_dispatcher.shutdown(cancel_pending=False, timeout=grace)
    log.info("dead-letter sink stopped")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m lepton_adapters.dead_letter_sink`."""
    from lepton_runtime.logs import configure
    from lepton_runtime.storage import Storage

    del argv  # configuration comes from the environment only
    try:
        settings = Settings.from_env()
        configure(settings.log_level)
        store = DeadLetterStore(Storage.from_settings(settings), settings)
    except ConfigurationError as exc:
        configure("INFO")
        log.error("invalid configuration", extra={"error": str(exc)})
        return 2
    serve(DeadLetterApp(store), settings.port, threads=min(settings.threads, 4), host=settings.host)
    return 0


def _decoded_error(value: Any) -> str | None:
    """knativeerrordata is the base64 of the subscriber's answer body."""
    if not value:
        return None
    try:
        text = base64.b64decode(str(value), validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        text = str(value)
    return text[:_ERROR_EXCERPT_CHARS]


def _plain(value: Any) -> Any:
    """An attribute value as JSON-friendly text."""
    return value.isoformat() if isinstance(value, datetime) else value


if __name__ == "__main__":
    sys.exit(main())
