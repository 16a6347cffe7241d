"""An HTTP proxy in front of the moto server that fails chosen S3 requests, to play a storage
fault against real function processes (they reach S3 through it via AWS_ENDPOINT_URL)."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class FaultyS3Proxy(ThreadingHTTPServer):
    """Forwards every request to `upstream`, except that a GET whose path ends with a chosen
    suffix is answered 503 SlowDown (a transient S3 fault) the next `times` times; PUTs may be
    failed so too (`fail_puts`), or held unanswered (`hold_puts`: a process killed meanwhile
    never learns whether they were done)."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = urlsplit(upstream)
        self._faults: dict[str, int] = {}
        self._put_faults: list[list] = []  # [containing, times left, after (or None)]
        self._holds: list[str] = []
        self._released = threading.Event()
        self.failed: dict[str, int] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def fail_gets(self, suffix: str, times: int) -> None:
        with self._lock:
            self._faults[suffix] = times

    def fail_puts(self, containing: str, times: int, after: str | None = None) -> None:
        """Answer 500 to the next `times` PUTs whose path contains `containing`, counted from
        the first PUT whose path ends with `after` (when given)."""
        with self._lock:
            self._put_faults.append([containing, times, after])

    def hold_puts(self, suffix: str) -> None:
        """Hold every PUT whose path ends with `suffix`, unforwarded, until close()."""
        with self._lock:
            self._holds.append(suffix)

    def saw(self, method: str, suffix: str) -> bool:
        with self._lock:
            return any(
                m == method and p.split("?", 1)[0].endswith(suffix) for m, p in self.requests
            )

    def should_hold(self, method: str, path: str) -> bool:
        with self._lock:
            return method == "PUT" and any(path.split("?", 1)[0].endswith(s) for s in self._holds)

    def should_fail(self, method: str, path: str) -> bool:
        with self._lock:
            self.requests.append((method, path))
        if method == "PUT":
            return self._put_fault(path.split("?", 1)[0])
        if method != "GET":
            return False
        with self._lock:
            for suffix, left in self._faults.items():
                if left > 0 and path.split("?", 1)[0].endswith(suffix):
                    self._faults[suffix] = left - 1
                    self.failed[suffix] = self.failed.get(suffix, 0) + 1
                    return True
        return False

    def _put_fault(self, path: str) -> bool:
        with self._lock:
            for fault in self._put_faults:
                containing, left, after = fault
                if after is not None:
                    if path.endswith(after):
                        fault[2] = None  # armed from the next PUT on
                    continue
                if left > 0 and containing in path:
                    fault[1] = left - 1
                    self.failed[containing] = self.failed.get(containing, 0) + 1
                    return True
        return False

    def close(self) -> None:
        self._released.set()
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: FaultyS3Proxy
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _forward(self) -> None:
        # Read first: a body left in the socket would be taken for the next request.
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if self.server.should_fail(self.command, self.path):
            status, code = (500, b"InternalError") if self.command == "PUT" else (503, b"SlowDown")
            error = (
                b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>" + code + b"</Code>"
                b"<Message>injected by the test</Message></Error>"
            )
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(error)))
            self.end_headers()
            self.wfile.write(error)
            return
        if self.server.should_hold(self.command, self.path):
            self.server._released.wait()
            self.close_connection = True
            return  # never forwarded, never answered
        upstream = http.client.HTTPConnection(
            self.server.upstream.hostname, self.server.upstream.port, timeout=60
        )
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
            self.send_response(answer.status, answer.reason)
            for key, value in answer.getheaders():
                if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            upstream.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward
