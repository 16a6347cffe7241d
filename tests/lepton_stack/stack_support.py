"""Helpers of the lepton_stack tests: a scripted HTTP subscriber, polling, events, free ports."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cloudevents.http import CloudEvent
from requests.structures import CaseInsensitiveDict

from lepton_runtime.events.outbound import binary_http, event_from_http

REPO = Path(__file__).resolve().parents[2]
KNATIVE_BASE = REPO / "knative" / "base"
S3_PUT = "com.amazonaws.s3.ObjectCreated:Put"


@dataclass
class Answer:
    """One scripted HTTP answer of a Subscriber."""

    status: int = 202
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0

    @classmethod
    def event(cls, event: CloudEvent, status: int = 200) -> Answer:
        """An answer carrying `event` in binary mode (a reply event when status is 200)."""
        headers, body = binary_http(event)
        return cls(status, headers, body)


@dataclass
class Received:
    path: str
    headers: CaseInsensitiveDict[str]
    body: bytes
    at: float

    def event(self) -> CloudEvent:
        return event_from_http(self.headers, self.body)


@dataclass
class Subscriber:
    """A real HTTP server recording every POST; answers `script` in order, then `default`."""

    url: str = ""
    script: list[Answer] = field(default_factory=list)
    default: Answer = field(default_factory=Answer)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, *answers: Answer | int) -> Subscriber:
        self.script.extend(a if isinstance(a, Answer) else Answer(a) for a in answers)
        return self

    def events(self) -> list[CloudEvent]:
        return [r.event() for r in list(self.received)]

    def _next(self) -> Answer:
        with self.lock:
            return self.script.pop(0) if self.script else self.default


@contextmanager
def serve_subscriber() -> Iterator[Subscriber]:
    subscriber = Subscriber()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            subscriber.received.append(
                Received(
                    self.path, CaseInsensitiveDict(self.headers.items()), body, time.monotonic()
                )
            )
            answer = subscriber._next()
            if answer.delay:
                time.sleep(answer.delay)
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def do_GET(self) -> None:  # a health endpoint
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    subscriber.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield subscriber
    finally:
        server.shutdown()
        server.server_close()


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def s3_event(
    key: str, name: str = "ObjectCreated:Put", bucket: str = "lepton-uploads"
) -> CloudEvent:
    """An S3 object event as the event-source adapter makes it (type, decoded-key subject)."""
    return CloudEvent(
        {
            "type": f"com.amazonaws.s3.{name}",
            "source": f"aws:s3.us-east-1.{bucket}",
            "subject": key,
            "datacontenttype": "application/json",
        },
        {"s3": {"bucket": {"name": bucket}, "object": {"key": key}}},
    )


def event(event_type: str, data: Any = None, **attributes: str) -> CloudEvent:
    return CloudEvent(
        {"type": event_type, "source": "/lepton/tests", **attributes},
        {"n": 1} if data is None else data,
    )
