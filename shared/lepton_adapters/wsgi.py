"""Waitress for the small WSGI apps (the event-source webhook, the dead-letter sink).

Waitress answers some requests itself, before any app sees them (a body over
`max_request_body_size`, however it is framed, malformed HTTP, headers too large), in plain
text. These servers answer those in the functions' JSON error format too, by giving waitress a
channel whose error task writes JSON (waitress' `channel_class` / `error_task_class` hooks).
"""

from __future__ import annotations

from typing import Any

import orjson
from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask

from lepton_runtime.http.responses import error_payload

_CODES = {400: "bad_request", 413: "payload_too_large", 431: "headers_too_large"}


class _JsonErrorTask(ErrorTask):
    def execute(self) -> None:
        error = self.request.error
        body = orjson.dumps(error_payload(_CODES.get(error.code, "http_error"), error.body))
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _JsonErrorChannel(HTTPChannel):
    error_task_class = _JsonErrorTask


def json_error_server(app: Any, *, max_body_bytes: int, **options: Any) -> Any:
    """`waitress.create_server(app, ...)` whose own error answers are JSON, with a body limit
    waitress enforces on what it buffers (Content-Length or chunked alike)."""
    server = create_server(app, max_request_body_size=max_body_bytes, **options)
    server.channel_class = _JsonErrorChannel
    return server
