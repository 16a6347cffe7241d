"""JSON log lines: one object per line, extra fields included, never an exception."""

from __future__ import annotations

import io
import json
import logging

import pytest

from lepton_runtime.logs import JsonFormatter


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
