"""JSON log lines on stdout: one object per line, `extra={...}` fields included."""

from __future__ import annotations

import asyncio
import json
import logging
import select
import sys
import time
from typing import TextIO

import orjson

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # orjson (UTF-8 as is, like ensure_ascii=False); the standard library for what orjson
        # refuses (integers past 64 bits).
        try:
            return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:
            return json.dumps(entry, default=str, ensure_ascii=False)


class RequestLog:
    """One JSON line per request, in JsonFormatter's format, written without the logging
    machinery: a LogRecord, its formatter and the handler's lock cost ~70 µs of CPU per request
    (11% of an answer, measured in `make bench`); this costs a few.

    With `flush_seconds` (what the server uses), the lines written on an event loop are
    gathered and go out together: `flush_seconds` after the first of them, as soon as they
    would pass PIPE_BUF bytes, and at `flush()` (the server's stop). A write per line was
    ~12-15 µs of a request's CPU under load (docs/performance.md); a line is then out at most
    `flush_seconds` late, and a `kill -9` loses at most those. Every write holds whole lines
    and at most PIPE_BUF bytes, so the worker processes sharing a pipe never interleave them
    (POSIX makes pipe writes of that size atomic). Without a running loop, or with
    `flush_seconds` 0, each line goes out at once.
    """

    LOGGER = "lepton.access"
    MAX_WRITE = select.PIPE_BUF

    def __init__(self, stream: TextIO | None = None, flush_seconds: float = 0.0) -> None:
        self.stream = stream
        self.flush_seconds = flush_seconds
        self._second = -1
        self._prefix = ""
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._timer: asyncio.TimerHandle | None = None

    def write(self, method: str, path: str, status: int, ms: float) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once a second
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        entry = {
            "time": f"{self._prefix}.{int(now % 1 * 1000):03d}Z",
            "level": "info",
            "logger": self.LOGGER,
            "message": "request",
            "method": method,
            "path": path,
            "status": status,
            "ms": ms,
        }
        line = orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)
        if self._pending_bytes + len(line) > self.MAX_WRITE:
            self.flush()
        self._pending.append(line)
        self._pending_bytes += len(line)
        if self._timer is None and not self._flush_later():
            self.flush()

    def _flush_later(self) -> bool:
        """Schedule the pending lines' write on the running loop; False when there is none."""
        if self.flush_seconds <= 0:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._timer = loop.call_later(self.flush_seconds, self.flush)
        return True

    def flush(self) -> None:
        """Write the pending lines now (one write)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        stream = self.stream or sys.stdout
        stream.write(data.decode())
        stream.flush()


def configure(level: str = "INFO", stream=None) -> None:  # type: ignore[no-untyped-def]
    """Send every logger's records to `stream` (stdout) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
