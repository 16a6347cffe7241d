"""JSON log lines on stdout: one object per line, `extra={...}` fields included."""

from __future__ import annotations

import json
import logging
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
    (11% of an answer, measured in `make bench`); this costs a few. Lines go out whole (one
    write and flush each), so the worker processes sharing stdout never interleave them."""

    LOGGER = "lepton.access"

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._second = -1
        self._prefix = ""

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
        stream = self.stream or sys.stdout
        stream.write(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE).decode())
        stream.flush()


def configure(level: str = "INFO", stream=None) -> None:  # type: ignore[no-untyped-def]
    """Send every logger's records to `stream` (stdout) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
