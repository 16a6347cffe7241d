"""JSON log lines: one object per line, extra fields included, never an exception."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import select

import pytest

from lepton_runtime.logs import JsonFormatter, RequestLog


@pytest.fixture
def logged() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("lepton.test.logs")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_record_is_one_json_object_with_its_extra_fields(logged) -> None:
    logger, stream = logged
    logger.info("request", extra={"status": 200, "path": "/é"})
    (line,) = _lines(stream)
    assert (line["message"], line["status"], line["path"], line["level"]) == (
        "request",
        200,
        "/é",
        "info",
    )


def test_values_json_cannot_hold_are_written_as_text(logged) -> None:
    logger, stream = logged
    logger.info("odd", extra={"big": 2**70, "keys": {1: "a"}, "obj": object()})
    (line,) = _lines(stream)
    assert line["big"] == 2**70
    assert line["obj"].startswith("<object object")


class _Writes(io.StringIO):
    """A stream that keeps each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_request_lines_on_a_loop_go_out_together_after_the_flush_delay() -> None:
    stream = _Writes()
    log = RequestLog(stream, flush_seconds=0.05)

    async def serve() -> list[int]:
        seen = []
        for index in range(3):
            log.write("POST", f"/{index}", 200, 1.0)
            seen.append(len(stream.writes))
        await asyncio.sleep(0.1)
        return seen

    assert asyncio.run(serve()) == [0, 0, 0]  # held while the requests are answered
    assert len(stream.writes) == 1
    assert [json.loads(line)["path"] for line in stream.getvalue().splitlines()] == [
        "/0",
        "/1",
        "/2",
    ]


def test_every_write_is_whole_lines_within_pipe_buf() -> None:
    stream = _Writes()
    log = RequestLog(stream, flush_seconds=10.0)

    async def serve() -> None:
        for index in range(200):
            log.write("POST", f"/v1/models/m{index}:predict", 200, 1.25)
        log.flush()

    asyncio.run(serve())
    assert len(stream.writes) > 1
    assert all(len(w.encode()) <= select.PIPE_BUF and w.endswith("\n") for w in stream.writes)
    paths = [json.loads(line)["path"] for line in stream.getvalue().splitlines()]
    assert paths == [f"/v1/models/m{index}:predict" for index in range(200)]


@pytest.mark.parametrize("flush_seconds", [0.05, 0.0])
def test_without_a_loop_each_request_line_goes_out_at_once(flush_seconds: float) -> None:
    stream = _Writes()
    RequestLog(stream, flush_seconds).write("GET", "/", 200, 0.5)  # no running loop here
    assert len(stream.writes) == 1


def test_no_delay_writes_at_once_even_on_a_loop() -> None:
    stream = _Writes()
    log = RequestLog(stream)

    async def serve() -> int:
        log.write("GET", "/", 200, 0.5)
        return len(stream.writes)

    assert asyncio.run(serve()) == 1
