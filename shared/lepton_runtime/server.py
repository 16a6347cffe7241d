"""Serve a function directory over HTTP: parliament's app, waitress on $PORT, honest health.

`python -m parliament DIR` hard-codes port 8080, answers readiness OK before anything is loaded
and exits on SIGTERM without draining. This builds the same app from
`parliament.server.create(parliament.server.load(dir))` and adds what a Knative Service needs:
$PORT, readiness that is 503 until the function says it is ready, /metrics, the V1 model routes
(handed to the same `main(context)`), a body-size limit, and a SIGTERM drain.
"""

from __future__ import annotations

import _thread
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import parliament.server
from flask import Flask, Response, request
from parliament.invocation import Context
from werkzeug.exceptions import HTTPException

from lepton_runtime.emit import event_from_http
from lepton_runtime.errors import PayloadTooLargeError
from lepton_runtime.protocol import error_response, json_response
from lepton_runtime.settings import Settings

log = logging.getLogger("lepton.server")


class FunctionService(Protocol):
    """What a func.py may expose as `service` for the server's lifecycle hooks.

    Optional too: `max_workers` (an int: how many processes may serve it at once; the training
    function says 1), `changed()` (shared state changed: re-read it; called in every worker
    when one of them announces a change) and `announce` (set by the server: call it to make
    the other workers' `changed()` run).
    """

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def ready(self) -> bool: ...


class _DropNoCloudEventWarning(logging.Filter):
    """parliament logs a warning for every POST that is not a CloudEvent: plain image POSTs
    are normal here, and the log line per request costs throughput."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "No CloudEvent available"


def build_app(func: Any, settings: Settings) -> Flask:
    """parliament's Flask app for `func`, plus readiness, metrics and V1 routes."""
    app = parliament.server.create(func)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.logger.addFilter(_DropNoCloudEventWarning())
    service: FunctionService | None = getattr(func, "service", None)
    draining = threading.Event()
    app.extensions["lepton.draining"] = draining

    def readiness() -> Response:
        ready = service is None or service.ready()
        if draining.is_set():
            return json_response({"status": "draining"}, 503)
        return json_response({"status": "ready" if ready else "loading"}, 200 if ready else 503)

    app.view_functions["readiness"] = readiness

    def handle_post() -> Any:
        # parliament's own handler runs from_http on every POST and logs a warning when it
        # fails; a request with neither ce-* headers nor a CloudEvents content type can only
        # fail, so it goes straight to main(context) with no cloud_event, as it would there.
        length = request.content_length
        if length is not None and length > settings.max_body_bytes:
            return error_response(
                PayloadTooLargeError(f"the body is larger than {settings.max_body_bytes} bytes")
            )
        context = Context(request)
        if _may_hold_cloudevent(request.headers):
            try:
                context.cloud_event = event_from_http(request.headers, request.get_data())
            except Exception:
                context.cloud_event = None
        return parliament.server.invoke(func, context)

    app.view_functions["handle_post"] = handle_post

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        # Flask's own answers (unknown path, wrong method) in the functions' error format.
        code = (error.name or "error").lower().replace(" ", "_")
        return json_response(
            {"error": {"code": code, "message": error.description or error.name}},
            error.code or 500,
        )

    metrics = getattr(service, "metrics", None)
    if metrics is not None:

        @app.route("/metrics", methods=["GET"])
        def metrics_route() -> Response:
            body, content_type = metrics.render()
            return Response(body, mimetype=content_type.split(";")[0], content_type=content_type)

    def invoke_main() -> Any:
        return parliament.server.invoke(func, Context(request))

    app.add_url_rule(
        "/v1/models/<path:target>",
        "v1_models",
        lambda target: invoke_main(),
        methods=["GET", "POST"],
    )
    return app


class _InFlight:
    """WSGI middleware counting requests being handled, so a drain knows when it is done."""

    def __init__(self, app: Callable) -> None:
        self.app = app
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        with self._lock:
            self.count += 1
        try:
            return self.app(environ, start_response)
        finally:
            with self._lock:
                self.count -= 1


def _may_hold_cloudevent(headers: Any) -> bool:
    """What cloudevents' from_http needs: binary mode ce-specversion, or a structured/batch
    CloudEvents content type."""
    if "ce-specversion" in headers:
        return True
    return headers.get("content-type", "").lower().startswith("application/cloudevents")


def load_function(function_dir: Path) -> Any:
    """Import a function directory's func.py the way parliament does."""
    return parliament.server.load(str(function_dir))


def serve_process(
    func: Any,
    function_dir: Path,
    settings: Settings,
    grace_seconds: float = 30.0,
    listen: Callable[[], socket.socket] | None = None,
    ready_wait: float = 0.0,
) -> None:
    """Serve a loaded function in this process until SIGTERM/SIGINT, then drain in-flight
    requests and return.

    `listen` makes the listening socket instead of binding $PORT. With `ready_wait`, the socket
    is opened only once the function is ready (or the wait is over): a worker that shares the
    port with others then takes no request before its model is loaded.
    """
    import waitress

    app = build_app(func, settings)
    wsgi = _InFlight(app)
    service: FunctionService | None = getattr(func, "service", None)
    if service is not None:
        service.start()
        deadline = time.monotonic() + ready_wait
        while time.monotonic() < deadline and not service.ready():
            time.sleep(0.02)
    where: dict[str, Any] = (
        {"sockets": [listen()]} if listen else {"host": "0.0.0.0", "port": settings.port}
    )
    server = waitress.create_server(
        wsgi,
        **where,
        threads=settings.threads,
        max_request_body_size=settings.max_body_bytes + 1024 * 1024,
        channel_timeout=120,
        connection_limit=1000,
        backlog=2048,
        ident="lepton",
        clear_untrusted_proxy_headers=False,
    )
    draining: threading.Event = app.extensions["lepton.draining"]

    drained = threading.Event()

    def drain() -> None:
        deadline = time.monotonic() + grace_seconds
        while wsgi.count and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)  # let the event loop flush the last responses
        drained.set()
        _thread.interrupt_main()  # runs on_signal again in the main thread, which now stops

    def on_signal(signum: int, _frame: Any) -> None:
        if drained.is_set():
            raise KeyboardInterrupt  # waitress' run() stops its loop and its threads
        if draining.is_set():
            return
        log.info(
            "stopping: draining in-flight requests",
            extra={"signal": signum, "in_flight": wsgi.count},
        )
        draining.set()
        server.accepting = False  # type: ignore[attr-defined]
        threading.Thread(target=drain, name="drain", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "serving",
        extra={
            "function": Path(function_dir).name,
            "port": settings.port,
            "threads": settings.threads,
            "pid": os.getpid(),
        },
    )
    try:
        server.run()
    finally:
        if service is not None:
            service.stop()
        server.close()
        log.info("stopped")
