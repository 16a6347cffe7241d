"""Whether an error is retried follows from its type alone."""

from __future__ import annotations

import pytest

from lepton_runtime.errors import (
    ObjectFormatError,
    StorageUnavailableError,
    raise_if_transient,
)


def test_a_transient_error_is_raised_again() -> None:
    error = StorageUnavailableError("S3 answered 503")
    with pytest.raises(StorageUnavailableError) as raised:
        raise_if_transient(error)
    assert raised.value is error


def test_a_permanent_error_is_left_to_the_caller() -> None:
    assert raise_if_transient(ObjectFormatError("not JSON")) is None
