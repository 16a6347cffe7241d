"""The bounded JSON parser every inbound body goes through."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lepton_runtime import jsonio
from lepton_runtime.errors import BadRequestError, PayloadTooLargeError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


def _count_values(value: object) -> int:
    if isinstance(value, list):
        return 1 + sum(_count_values(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(1 + _count_values(v) for v in value.values())  # a key is a value too
    return 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_bad_request(data: bytes) -> None:
    with contextlib.suppress(BadRequestError):
        jsonio.loads(data)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_valid_json_round_trips(value: object) -> None:
    assert jsonio.loads(json.dumps(value).encode()) == value


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_the_value_bound_never_undercounts(value: object) -> None:
    text = json.dumps(value)
    assert jsonio.value_bound(text) * 2 >= _count_values(value)  # keys and values of a pair


def test_nesting_deeper_than_the_limit_is_a_bad_request_naming_it() -> None:
    with pytest.raises(BadRequestError, match="deeper than 1024"):
        jsonio.loads(b"[" * 100_000 + b"]" * 100_000)


def test_many_empty_containers_are_refused_before_parsing() -> None:
    body = b"[" + b"[]," * 400_000 + b"[]]"
    with pytest.raises(PayloadTooLargeError, match="the limit is 100000"):
        jsonio.loads(body, max_values=100_000)


def test_an_empty_body_says_so() -> None:
    with pytest.raises(BadRequestError, match="empty"):
        jsonio.loads(b"  ")


def test_numpy_values_are_written_as_numbers() -> None:
    import numpy as np

    assert jsonio.dumps({"p": np.float32(0.5), "a": np.arange(2)}) == b'{"p":0.5,"a":[0,1]}'
