"""Property-based tests over the event parsers and the wire formats: whatever arrives, nothing
but the runtime's typed errors comes out, and what is accepted is well formed."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from cloudevents.http import CloudEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lepton_runtime import jsonio
from lepton_runtime.errors import LeptonError
from lepton_runtime.events.inbound import ObjectRef, find_records, parse_cloudevent, parse_json
from lepton_runtime.http import wire

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
    parsed = _only_typed_errors(lambda: wire.parse_tfserving(payload, (2, 2, 1), 8))
    if isinstance(parsed, wire.TensorInput):
        assert parsed.array.shape[1:] == (2, 2, 1)
        assert np.isfinite(parsed.array).all()
    elif parsed is not None:
        assert 1 <= len(parsed.images) <= 8
        assert all(isinstance(data, bytes) and data for _, data in parsed.images)


@PROPERTY
@given(st.lists(st.lists(st.lists(st.floats(width=32), max_size=3), max_size=3), max_size=3))
def test_numeric_instances_of_any_shape_parse_or_fail_typed(instances: list) -> None:
    _only_typed_errors(lambda: wire.parse_tfserving({"instances": instances}, (2, 2, 1), 8))


v2_tensors = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["image", "x"]) | leaves,
        "shape": st.lists(st.integers(-1, 4), max_size=5) | leaves,
        "datatype": st.sampled_from(["BYTES", "FP32", "UINT8", "FP16", "BOOL", "STRING"]) | leaves,
    },
    optional={
        "data": json_values
        | st.lists(st.floats(width=32), max_size=8)
        | st.lists(st.sampled_from(["eA==", "%%", "", "AAAA"]), max_size=4),
        "parameters": st.fixed_dictionaries(
            {}, optional={"binary_data_size": st.integers(-1, 40) | leaves}
        )
        | leaves,
    },
)


@PROPERTY
@given(
    st.fixed_dictionaries(
        {"inputs": st.lists(v2_tensors, max_size=2) | json_values},
        optional={
            "id": st.text(max_size=3) | leaves,
            "outputs": st.lists(
                st.fixed_dictionaries({"name": st.sampled_from(["probabilities", "y"])}),
                max_size=2,
            )
            | json_values,
            "parameters": st.fixed_dictionaries({}, optional={"binary_data_output": st.booleans()})
            | leaves,
        },
    )
    | json_values,
    st.binary(max_size=40),
)
def test_any_v2_request_parses_to_the_input_shape_or_fails_typed(
    payload: Any, binary: bytes
) -> None:
    parsed = _only_typed_errors(lambda: wire.parse_v2_infer(payload, binary, (2, 2, 1), 8))
    if parsed is None:
        return
    if isinstance(parsed.inputs, wire.TensorInput):
        assert parsed.inputs.array.shape[1:] == (2, 2, 1)
        assert parsed.inputs.array.dtype == np.float32
        assert np.isfinite(parsed.inputs.array).all()
    else:
        assert 1 <= len(parsed.inputs.images) <= 8
        assert all(isinstance(data, bytes) and data for _, data in parsed.inputs.images)
