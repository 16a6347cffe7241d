"""Errors -> HTTP answers: whether a fault is retried follows from its type alone."""

from __future__ import annotations

import logging

import pytest
from flask import Response

import lepton_adapters.event_source  # noqa: F401 - registers DeliveryError among the subclasses
from lepton_model.errors import LeptonModelError
from lepton_runtime.errors import (
    ConfigurationError,
    LeptonError,
    ObjectNotFoundError,
    StorageError,
    StorageUnavailableError,
    is_retryable,
)
from lepton_runtime.http.responses import Work, failure_reply, respond, status_for
from lepton_runtime.metrics import FunctionMetrics


def _all_subclasses(*bases: type) -> list[type]:
    found: list[type] = []
    pending = list(bases)
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


ERROR_TYPES = [
    cls
    for cls in _all_subclasses(LeptonError, LeptonModelError)
    if cls.__module__.startswith(("lepton_runtime", "lepton_model"))
]


@pytest.mark.parametrize("cls", ERROR_TYPES, ids=lambda cls: cls.__name__)
def test_a_retryable_type_answers_a_retried_status_and_a_permanent_one_never_5xx(
    cls: type,
) -> None:
    error = cls.__new__(cls)  # the status depends on the type only, not on its arguments
    status = status_for(error)
    if is_retryable(error):
        assert status in (429, 503)
    elif cls is not ConfigurationError:  # raised at start-up only, never answered
        assert status < 500


def test_a_plain_storage_error_is_permanent() -> None:
    assert not is_retryable(StorageError("KeyTooLongError"))
    assert status_for(StorageError("x")) == 422


def test_an_unexpected_exception_is_a_500_and_not_retryable() -> None:
    assert status_for(KeyError("bug")) == 500
    assert not is_retryable(KeyError("bug"))


def _respond(error: Exception, event: bool) -> Response:
    def fail() -> Response:
        raise error

    failed = failure_reply("ai.lepton.test.failed", "/test", "origin-1") if event else None
    return respond(
        lambda: Work("event" if event else "http", fail, failed),
        FunctionMetrics("protocol-test"),
        logging.getLogger("test"),
    )


def test_a_permanent_error_of_an_event_is_a_200_failed_reply() -> None:
    response = _respond(ObjectNotFoundError("gone"), event=True)
    assert response.status_code == 200
    assert response.headers["ce-type"] == "ai.lepton.test.failed"


def test_a_bug_met_by_an_event_is_a_failed_reply_too() -> None:
    assert _respond(KeyError("bug"), event=True).status_code == 200


def test_a_transient_error_of_an_event_is_a_503_with_retry_after() -> None:
    response = _respond(StorageUnavailableError("down"), event=True)
    assert response.status_code == 503
    assert response.headers["Retry-After"]


def test_a_permanent_error_of_a_plain_request_is_its_4xx() -> None:
    assert _respond(ObjectNotFoundError("gone"), event=False).status_code == 410


def _readme_retry_table() -> dict[str, tuple[str, str]]:
    """README's retry table: error code -> (plain HTTP column, retried column)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[3] / "README.md").read_text()
    table = readme.split("| Fault (error code) |", 1)[1].split("\n\n", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        for code in re.findall(r"`([a-z_]+)`", cells[0]):
            rows[code] = (cells[1], cells[3])
    return rows


@pytest.mark.parametrize(
    "cls",
    [
        cls
        for cls in ERROR_TYPES
        if cls.__module__
        in ("lepton_runtime.errors", "lepton_model.errors")  # what functions answer
        and cls not in (LeptonError, LeptonModelError, ConfigurationError)
    ],
    ids=lambda cls: cls.__name__,
)
def test_the_readme_retry_table_says_what_the_code_does(cls: type) -> None:
    error = cls.__new__(cls)
    plain, retried = _readme_retry_table()[cls.code]
    assert str(status_for(error)) in plain
    assert retried == ("yes" if is_retryable(error) else "no")
