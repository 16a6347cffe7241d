"""Property-based tests over the event parsers and the wire formats: whatever arrives, nothing
but the runtime's typed errors comes out, and what is accepted is well formed."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from cloudevents.http import CloudEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lepton_runtime import codecs, jsonio
from lepton_runtime.errors import LeptonError
from lepton_runtime.events import ObjectRef, find_records, parse_cloudevent, parse_json

leaves = st.none() | st.booleans() | st.integers(-1000, 1000) | st.floats(allow_nan=False)
keys = st.sampled_from(
    [
        "Records",
        "s3",
        "bucket",
        "name",
        "object",
        "key",
        "eventName",
        "Body",
        "body",
        "Message",
        "Type",
        "detail",
        "detail-type",
        "EventName",
        "Key",
        "Event",
        "eventSource",
        "Sns",
        "EventSource",
        "specversion",
        "instances",
        "inputs",
        "b64",
        "x",
    ]
) | st.text(max_size=6)
strings = st.sampled_from(
    [
        "ObjectCreated:Put",
        "s3:ObjectCreated:Put",
        "Notification",
        "aws:sqs",
        "aws:sns",
        "Object Created",
        "s3:TestEvent",
        "images/a.png",
        "lepton-uploads",
        "{}",
        '{"Records": []}',
    ]
) | st.text(max_size=12)
json_values = st.recursive(
    leaves | strings,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=40,
)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_typed_errors(call: Any) -> Any:
    try:
        return call()
    except LeptonError:
        return None


@PROPERTY
@given(json_values)
def test_any_json_body_parses_to_refs_or_a_typed_error(body: Any) -> None:
    event = _only_typed_errors(lambda: parse_json(body))
    if event is not None:
        assert all(isinstance(ref, ObjectRef) and ref.bucket and ref.key for ref in event.refs)


@PROPERTY
@given(json_values)
def test_any_json_inside_an_sqs_body_parses_or_fails_typed(inner: Any) -> None:
    _only_typed_errors(lambda: find_records({"Body": json.dumps(inner)}))


@PROPERTY
@given(
    st.sampled_from(
        [
            "com.amazonaws.s3.ObjectCreated:Put",
            "dev.knative.eventing.aws-sqs",
            "ai.lepton.model.published",
            "x",
        ]
    ),
    json_values | st.binary(max_size=40),
)
def test_any_cloudevent_data_parses_or_fails_typed(event_type: str, data: Any) -> None:
    event = CloudEvent({"type": event_type, "source": "prop"}, data)
    _only_typed_errors(lambda: parse_cloudevent(event))


@PROPERTY
@given(st.binary(max_size=200))
def test_any_bytes_as_a_json_body_fail_typed(data: bytes) -> None:
    _only_typed_errors(lambda: parse_json(jsonio.loads(data)))


@PROPERTY
@given(json_values)
def test_any_tfserving_payload_parses_to_the_input_shape_or_fails_typed(payload: Any) -> None:
    parsed = _only_typed_errors(lambda: codecs.parse_tfserving(payload, (2, 2, 1), 8))
    if isinstance(parsed, codecs.TensorInput):
        assert parsed.array.shape[1:] == (2, 2, 1)
        assert np.isfinite(parsed.array).all()
    elif parsed is not None:
        assert 1 <= len(parsed.images) <= 8
        assert all(isinstance(data, bytes) and data for _, data in parsed.images)


@PROPERTY
@given(st.lists(st.lists(st.lists(st.floats(width=32), max_size=3), max_size=3), max_size=3))
def test_numeric_instances_of_any_shape_parse_or_fail_typed(instances: list) -> None:
    _only_typed_errors(lambda: codecs.parse_tfserving({"instances": instances}, (2, 2, 1), 8))
