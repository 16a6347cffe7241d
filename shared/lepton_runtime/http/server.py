"""Serve a function directory over HTTP: parliament's `main(context)` behind a lean ASGI front.

`python -m parliament DIR` hard-codes port 8080, answers readiness OK before anything is loaded,
runs Flask's full dispatch for every request and exits on SIGTERM without draining. This keeps
parliament's contract (the function's `main(context)` gets a `Context` holding the Flask
`Request` and, when the request is one, the CloudEvent; it returns what parliament's `invoke`
accepts) and serves it with uvicorn (httptools + uvloop) on $PORT, adding what a Knative Service
needs: readiness that is 503 until the function says it is ready, /metrics, the V1/V2 model
routes (handed to the same `main`), bounded request bodies, JSON errors at every layer and a
SIGTERM drain.

The front does per request only what a request needs: a route check, the body read within its
limits, a `Request` and a `Context`, and `main`. Flask's app (parliament's `create`) is kept to
turn return values that are not a `Response` into one. A service may answer the requests it
serves from memory itself (`direct`), without a Request, a Context or `main`; Flask, werkzeug
and parliament are then imported only when a request needs them (or in the background once the
server is up), so a process answers its first prediction without having imported them. `main`
runs on the event loop when the function says the request is answered from memory
(`service.inline(request)`: an image to classify), else on a thread pool, so a request doing
I/O (an event reading S3, a training) never stalls the others.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httptools
import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from lepton_runtime.events.outbound import event_from_http
from lepton_runtime.http.processes import bound_heap, settle_heap
from lepton_runtime.http.responses import Answer, error_payload
from lepton_runtime.logs import RequestLog
from lepton_runtime.settings import Settings

if TYPE_CHECKING:
    from flask import Flask, Request
    from parliament.invocation import Context
    from werkzeug.wrappers import Response

log = logging.getLogger("lepton.server")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# Paths handed to main(context); anything else is a JSON 404.
_MAIN_PATHS = ("/", "/v2")
_MAIN_PREFIXES = ("/v1/", "/v2/")
_MAIN_METHODS = ("GET", "HEAD", "POST")
_JSON = [(b"content-type", b"application/json")]
access_log = logging.getLogger(RequestLog.LOGGER)


# `service.direct(method, path, query_string, headers, body)`: see FunctionService.
Direct = Callable[[str, str, bytes, dict[str, str], bytes], Answer | None]


class FunctionService(Protocol):
    """What a func.py may expose as `service` for the server's lifecycle hooks.

    Optional too: `max_workers` (an int: how many processes may serve it at once; the training
    function says 1), `wait_ready(timeout)` (block until ready; else `ready()` is polled),
    `metrics` (rendered at /metrics), `inline(request)` (True when main answers
    the request from memory, without blocking I/O: it then runs on the event loop),
    `changed()` (shared state changed: re-read it; called in every worker when one of them
    announces a change), `announce` (set by the server: call it to make the other workers'
    `changed()` run) and `direct(method, path, query_string, headers, body)` (the answer to a
    request it serves from memory without `main(context)`, as an `Answer`, or None to hand
    the request to `main`; called on the event loop with lower-case header names).
    """

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def ready(self) -> bool: ...


def error_json(status: int, code: str, message: str) -> bytes:
    """The functions' error body, for answers the front gives itself."""
    return orjson.dumps(error_payload(code, message))


class BodyBudget:
    """Bytes of request bodies held at once by this process (all connections together).

    uvicorn stops reading a connection after 64 KiB until the app asks for more, so what a
    process holds is what its requests have read; without a shared bound, many slow clients
    each sending a body just under the limit would multiply it. Used from the event loop only.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0

    async def reserve(self, amount: int, timeout: float) -> bool:
        """Hold `amount` bytes; False if there was no room within `timeout` seconds."""
        amount = min(amount, self.capacity)
        deadline = time.monotonic() + timeout
        while self.held + amount > self.capacity:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)  # rare: only when bodies of this size are queued
        self.held += amount
        return True

    def release(self, amount: int) -> None:
        self.held -= min(amount, self.capacity)


class _TooLarge(Exception):
    """The body is over its limit; `drained` says whether the rest was read (keep-alive)."""

    def __init__(self, message: str, drained: bool) -> None:
        super().__init__(message)
        self.drained = drained


class FunctionApp:
    """The ASGI application serving one function."""

    def __init__(
        self, func: Any, settings: Settings, request_log: RequestLog | None = None
    ) -> None:
        self.func = func
        self.settings = settings
        self.service: FunctionService | None = getattr(func, "service", None)
        self.metrics = getattr(self.service, "metrics", None)
        self.inline: Callable[[Request], bool] | None = getattr(self.service, "inline", None)
        self.direct: Direct | None = getattr(self.service, "direct", None)
        self._flask: Flask | None = None
        self.draining = threading.Event()
        self.budget = BodyBudget(settings.body_budget_bytes)
        self._pool = ThreadPoolExecutor(settings.threads, thread_name_prefix="main")
        # Written by the server itself (see RequestLog); on when LEPTON_ACCESS_LOG is and the
        # log level lets info through.
        self.request_log = request_log or (
            RequestLog(flush_seconds=settings.access_log_flush_seconds)
            if settings.access_log
            else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan and websockets are switched off in the server config
        method: str = scope["method"]
        path: str = scope["path"]
        if method in ("GET", "HEAD"):
            if path == "/health/liveness":
                return await _send(send, 200, b'{"status":"alive"}', _JSON)
            if path == "/health/readiness":
                return await self._readiness(send)
            # The Open Inference Protocol's (V2) server health, in its format.
            if path == "/v2/health/live":
                return await _send(send, 200, b'{"live":true}', _JSON)
            if path == "/v2/health/ready":
                ready = self._ready()
                body = b'{"ready":true}' if ready else b'{"ready":false}'
                return await _send(send, 200 if ready else 503, body, _JSON)
            if path == "/metrics" and self.metrics is not None:
                body, content_type = self.metrics.render()
                return await _send(send, 200, body, [(b"content-type", content_type.encode())])
        if path not in _MAIN_PATHS and not path.startswith(_MAIN_PREFIXES):
            return await _send(send, 404, error_json(404, "not_found", f"no route {path}"), _JSON)
        if method not in _MAIN_METHODS:
            message = f"{method} is not allowed; use {', '.join(_MAIN_METHODS)}"
            headers = [*_JSON, (b"allow", b", ".join(m.encode() for m in _MAIN_METHODS))]
            return await _send(send, 405, error_json(405, "method_not_allowed", message), headers)
        await self._main(scope, receive, send)

    def _ready(self) -> bool:
        """Ready to take requests: not draining, and the function says it is ready."""
        return not self.draining.is_set() and (self.service is None or self.service.ready())

    async def _readiness(self, send: Send) -> None:
        if self.draining.is_set():
            return await _send(send, 503, b'{"status":"draining"}', _JSON)
        ready = self._ready()
        state: dict[str, Any] = {"status": "ready" if ready else "loading"}
        detail = getattr(self.service, "readiness_detail", None)
        if detail is not None:
            state.update(detail())
        await _send(send, 200 if ready else 503, orjson.dumps(state), _JSON)

    async def _main(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one request through the function's `main`, and log it."""
        started = time.perf_counter()
        status = await self._answer_main(scope, receive, send)
        if self.request_log is not None and access_log.isEnabledFor(logging.INFO):
            # The health and metrics routes above are not logged: probes would drown the rest.
            ms = round((time.perf_counter() - started) * 1000, 2)
            self.request_log.write(scope["method"], scope["path"], status, ms)

    async def _answer_main(self, scope: Scope, receive: Receive, send: Send) -> int:
        """The status answered (499 when the client left before its body was read)."""
        headers = _header_map(scope["headers"])
        limit = self.settings.max_body_bytes
        declared = _content_length(headers)
        reserved = min(declared, limit) if declared is not None else limit
        if declared is not None and declared > limit and "expect" in headers:
            # The client waits for 100 Continue before sending: refuse now, it sends nothing.
            await self._too_large(send, declared, close=True)
            return 413
        if not await self.budget.reserve(reserved, self.settings.body_wait_seconds):
            message = "the server holds as many request bodies as it may; retry shortly"
            headers_out = [*_JSON, (b"retry-after", b"1")]
            await _send(send, 503, error_json(503, "server_busy", message), headers_out)
            return 503
        request: Request | None = None
        try:
            try:
                body = await _read_body(receive, limit, declared)
            except _TooLarge as exc:
                await self._too_large(send, declared, close=not exc.drained)
                return 413
            if body is None:
                return 499  # the client went away
            cloudevent = _may_hold_cloudevent(headers)
            if self.direct is not None and not cloudevent:
                answer = self.direct(
                    scope["method"], scope["path"], scope["query_string"], headers, body
                )
                if answer is not None:
                    await _send_answer(send, answer)
                    return answer.status
            from parliament.invocation import Context

            request = self._request(scope, headers, body)
            context = Context(request)
            if cloudevent:
                try:
                    context.cloud_event = event_from_http(
                        request.headers, body, self.settings.max_json_values
                    )
                except Exception:  # not a CloudEvent after all: main sees the plain request
                    context.cloud_event = None
            if self.inline is not None and self.inline(request):
                response = self._invoke(context)
            else:
                loop = asyncio.get_running_loop()
                response = await loop.run_in_executor(self._pool, self._invoke, context)
            await _send_response(send, response)
            return response.status_code
        finally:
            if request is not None:
                # werkzeug keeps the Request in its own environ (a reference cycle): break it,
                # so the body is freed now rather than at the next garbage collection.
                request.environ.pop("werkzeug.request", None)
            self.budget.release(reserved)

    async def _too_large(self, send: Send, declared: int | None, close: bool) -> None:
        size = f"{declared} bytes" if declared is not None else "larger than that"
        message = f"the body is {size}; the limit is {self.settings.max_body_bytes} bytes"
        headers = [*_JSON, (b"connection", b"close")] if close else _JSON
        if self.metrics is not None:
            self.metrics.request("other", 413, 0.0)
        await _send(send, 413, error_json(413, "payload_too_large", message), headers)

    def _request(self, scope: Scope, headers: dict[str, str], body: bytes) -> Request:
        from flask import Request

        request = Request(_environ(scope, headers, body))
        # The body is read whole already: werkzeug's own cache of it (what get_data() fills and
        # its form parser reads from) spares every reader the stream wrappers.
        request._cached_data = body
        # Bounds for werkzeug's own parsers (forms), without needing Flask's app context.
        request.max_content_length = self.settings.max_body_bytes
        request.max_form_parts = self.settings.max_form_parts
        request.max_form_memory_size = self.settings.max_form_memory_bytes
        return request

    def _invoke(self, context: Context) -> Response:
        import parliament.server
        from werkzeug.wrappers import Response

        result = parliament.server.invoke(self.func, context)
        if isinstance(result, Response):
            return result
        if self._flask is None:
            self._flask = parliament.server.create(self.func)  # to normalise what main returns
        with self._flask.app_context():
            return self._flask.make_response(result)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
        if self.request_log is not None:
            self.request_log.flush()


def build_app(func: Any, settings: Settings, request_log: RequestLog | None = None) -> FunctionApp:
    """The ASGI app serving `func` (a func.py module or anything with `main` and `service`);
    request lines go to `request_log` (stdout by default)."""
    return FunctionApp(func, settings, request_log)


async def _read_body(receive: Receive, limit: int, declared: int | None) -> bytes | None:
    """The whole body, or None if the client disconnected; _TooLarge past `limit`.

    A body over the limit is read on (and dropped) up to the limit again, so the client is
    answered on a connection that stays usable rather than reset mid-send.
    """
    if declared is not None and declared > 2 * limit:
        raise _TooLarge("declared too large to drain", drained=False)
    chunks = bytearray()
    total = 0
    over = declared is not None and declared > limit
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        total += len(chunk)
        if total > limit:
            over = True
        if over:
            if total > 2 * limit:
                raise _TooLarge("too large to drain", drained=False)
            continue
        chunks += chunk
    if over:
        raise _TooLarge("over the limit", drained=True)
    return bytes(chunks)


def _header_map(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1")
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]},{text}" if key in headers else text
    return headers


def _content_length(headers: dict[str, str]) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    try:
        return max(0, int(value))
    except ValueError:
        return None


def _environ(scope: Scope, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The WSGI environ werkzeug's Request reads, from an ASGI scope and a body read whole."""
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client") or ("", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        # WSGI carries the decoded path as latin-1 code points of its UTF-8 bytes.
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": str(client[0]),
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in headers.items():
        if name == "content-type":
            environ["CONTENT_TYPE"] = value
        elif name != "content-length":
            environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


def _may_hold_cloudevent(headers: dict[str, str]) -> bool:
    """What cloudevents' from_http needs: binary mode ce-specversion, or a structured/batch
    CloudEvents content type. Anything else can only fail to parse, so it is not tried."""
    if "ce-specversion" in headers:
        return True
    return headers.get("content-type", "").lower().startswith("application/cloudevents")


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_answer(send: Send, answer: Answer) -> None:
    headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers
    ]
    await _send(send, answer.status, answer.body, headers)


async def _send_response(send: Send, response: Response) -> None:
    body = response.get_data()
    headers = []
    for name, value in response.headers:
        lower = name.lower()
        if lower != "content-length":
            headers.append((lower.encode("latin-1"), value.encode("latin-1")))
    await _send(send, response.status_code, body, headers)


class _OneWrite:
    """The transport a response is written to, sending its status line and headers together
    with the first piece of its body.

    uvicorn writes the head and the body with two `transport.write` calls: two send() system
    calls and, with TCP_NODELAY, two TCP segments for every response. Held here, the head goes
    out with the body in one; anything written before the response starts (100 Continue) goes
    at once, and nothing is held past the response or a close.
    """

    __slots__ = ("_cycle", "_done", "_head", "_held", "_transport")

    def __init__(self, cycle: Any) -> None:
        self._transport = cycle.transport
        self._cycle = cycle
        self._done: Callable[[], None] = cycle.on_response
        self._head: bytes | None = None
        self._held = False  # the head was seen (held or sent)
        cycle.transport = self
        cycle.on_response = self._finish

    def write(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
        elif not self._held and self._cycle.response_started:
            self._head, self._held = data, True
            return
        self._transport.write(data)

    def flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def _finish(self) -> None:
        self.flush()  # a head without a body (HEAD, 204) is still held
        self._done()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on request line + headers (httptools has none),
    its own error answers in the functions' JSON format, and each response written at once
    (`_OneWrite`)."""

    max_header_bytes = 64 * 1024

    def on_headers_complete(self) -> None:
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not previous:  # a request starts (not an upgrade)
            _OneWrite(cycle)

    _header_bytes = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        if self._header_bytes > self.max_header_bytes:
            raise httptools.HttpParserError("request line and headers too large")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > self.max_header_bytes:
            raise httptools.HttpParserError("request line and headers too large")
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        large = self._header_bytes > self.max_header_bytes
        status, code = (431, "headers_too_large") if large else (400, "bad_request")
        text = (
            f"the request line and headers are over {self.max_header_bytes} bytes"
            if large
            else "the request is not valid HTTP/1.1"
        )
        body = error_json(status, code, text)
        reason = b"Request Header Fields Too Large" if large else b"Bad Request"
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason, len(body), body)
        )
        self.transport.close()


def load_function(function_dir: Path) -> Any:
    """Import a function directory's func.py the way parliament's `load` does (its folder on
    sys.path, imported as `func`). Not parliament.server.load itself: importing that module
    imports Flask, which a process answering only the direct routes never needs."""
    sys.path.append(os.path.realpath(function_dir))
    return importlib.import_module("func")


# What a request handed to main(context) needs, imported once the server is up (see warm_up).
_LAZY_MODULES = (
    "flask",
    "werkzeug.wrappers",
    "parliament.server",
    "parliament.invocation",
    "cloudevents.http",
    "cloudevents.conversion",
)


def warm_up(modules: tuple[str, ...] = _LAZY_MODULES, delay: float = 0.5) -> threading.Thread:
    """Import `modules` in a background thread after `delay` seconds: the first request that
    needs them (an event, a form) then finds them loaded, and the start did not wait for them."""

    def load() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # a missing optional module shows where it is used, not here
                log.debug("warm-up import failed", extra={"module": name}, exc_info=True)

    thread = threading.Timer(delay, load)
    thread.daemon = True
    thread.name = "warm-up"
    thread.start()
    return thread


def listening_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def serve_process(
    func: Any,
    function_dir: Path,
    settings: Settings,
    grace_seconds: float = 30.0,
    listen: Callable[[], socket.socket] | None = None,
    ready_wait: float = 0.0,
) -> None:
    """Serve a loaded function in this process until SIGTERM/SIGINT, then let the requests in
    flight finish (up to `grace_seconds`) and return.

    `listen` makes the listening socket instead of binding $HOST:$PORT. With `ready_wait`, the
    socket is opened only once the function is ready (or the wait is over): a worker that shares
    the port with others then takes no request before its model is loaded.
    """
    bound_heap()
    app = build_app(func, settings)
    service = app.service
    if service is not None:
        service.start()
        wait_ready = getattr(service, "wait_ready", None)
        if wait_ready is not None:
            wait_ready(ready_wait)
        else:
            deadline = time.monotonic() + ready_wait
            while time.monotonic() < deadline and not service.ready():
                time.sleep(0.02)
    settle_heap()  # the model and everything loaded so far live as long as the process
    sock = listen() if listen else listening_socket(settings.host, settings.port)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http=_Protocol,
        ws="none",
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        date_header=False,
        timeout_keep_alive=settings.keep_alive_seconds,
        timeout_graceful_shutdown=int(grace_seconds),
        # Nothing here reads the client's address; X-Forwarded-* rewriting is one more ASGI
        # layer on every request for nothing.
        proxy_headers=False,
    )
    server = _Server(config, app.draining)
    log.info(
        "serving",
        extra={
            "function": Path(function_dir).name,
            "host": settings.host,
            "port": settings.port,
            "threads": settings.threads,
            "pid": os.getpid(),
        },
    )
    warm_up((*_LAZY_MODULES, *getattr(service, "warm_modules", ())))
    try:
        server.run(sockets=[sock])
    finally:
        app.close()
        if service is not None:
            service.stop()
        sock.close()
        log.info("stopped")


class _Server(uvicorn.Server):
    """uvicorn's Server whose SIGTERM/SIGINT marks the app draining (readiness 503) and ends
    the process normally once requests in flight are done (uvicorn would re-raise the signal
    after its drain, turning a clean stop into death by SIGTERM)."""

    def __init__(self, config: uvicorn.Config, draining: threading.Event) -> None:
        super().__init__(config)
        self._draining = draining

    def handle_exit(self, sig: int, frame: Any) -> None:
        if not self._draining.is_set():
            log.info("stopping: draining in-flight requests", extra={"signal": sig})
        self._draining.set()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True
