"""Trigger and Broker objects: the real knative/base manifests, every filter dialect, delivery."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from stack_support import KNATIVE_BASE, S3_PUT, event, s3_event

from lepton_runtime.events.outbound import (
    INFERENCE_COMPLETED,
    INFERENCE_FAILED,
    MODEL_PUBLISHED,
    REPLY_TYPES,
    TRAINING_FAILED,
    binary_http,
    event_from_http,
    s3_object_event,
)
from lepton_stack.stack import LocalStack
from lepton_stack.state import StackLayout
from lepton_stack.triggers import (
    Delivery,
    Trigger,
    TriggerConfigError,
    compile_filter,
    load_triggers,
    parse_delivery,
    trigger_predicate,
)

IMAGES = "lepton-infer-images"
DATASETS = "lepton-train-datasets"
PUBLISHED = "lepton-infer-model-published"


@pytest.fixture(scope="module")
def base() -> dict[str, Trigger]:
    return {t.name: t for t in load_triggers([KNATIVE_BASE])}


def matching(triggers: dict[str, Trigger], attributes: dict[str, Any]) -> set[str]:
    return {name for name, t in triggers.items() if t.matches(attributes)}


def s3(key: str, name: str = "ObjectCreated:Put") -> dict[str, Any]:
    return s3_event(key, name).get_attributes()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "manifests.yaml"
    path.write_text(textwrap.dedent(text))
    return path


BROKER = """
    apiVersion: eventing.knative.dev/v1
    kind: Broker
    metadata: {name: main}
    spec:
      delivery:
        retry: 4
        backoffPolicy: linear
        backoffDelay: PT2S
        timeout: PT10S
        deadLetterSink: {ref: {kind: Service, name: graveyard}}
    ---
"""


# -- the real manifests --------------------------------------------------------------------------


def test_the_base_manifests_load_with_the_three_triggers_of_broker_lepton(
    base: dict[str, Trigger],
) -> None:
    assert set(base) == {IMAGES, DATASETS, PUBLISHED}
    assert {t.broker for t in base.values()} == {"lepton"}
    assert base[IMAGES].subscriber == "lepton-infer"
    assert base[DATASETS].subscriber == "lepton-train"


def test_the_base_manifests_delivery_settings_are_read(base: dict[str, Trigger]) -> None:
    images, datasets = base[IMAGES].delivery, base[DATASETS].delivery
    assert (images.retry, images.backoff_policy, images.backoff_delay, images.timeout) == (
        6,
        "exponential",
        0.5,
        60.0,
    )
    assert (datasets.retry, datasets.backoff_delay, datasets.timeout) == (2, 5.0, 1800.0)
    assert images.dead_letter_sink == datasets.dead_letter_sink == "lepton-dead-letters"


def test_every_base_destination_is_a_subscriber_the_local_stack_serves(
    base: dict[str, Trigger], tmp_path: Path
) -> None:
    stack = LocalStack(StackLayout(root=tmp_path))
    stack.queues = {"queue_url": "http://127.0.0.1:1/queue"}
    router = next(p for p in stack._parts() if p.name == "router")
    command = list(router.command)
    served = {
        command[i + 1].split("=", 1)[0] for i, arg in enumerate(command) if arg == "--subscriber"
    }
    destinations = {t.subscriber for t in base.values()} | {
        t.delivery.dead_letter_sink for t in base.values()
    }
    assert destinations <= served


def test_an_image_upload_goes_to_the_inference_function_only(base: dict[str, Trigger]) -> None:
    assert matching(base, s3("images/cat 1.png")) == {IMAGES}


def test_an_image_upload_still_matches_after_the_binary_http_round_trip(
    base: dict[str, Trigger],
) -> None:
    record = {
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "lepton-uploads"}, "object": {"key": "images%2Fcat+1.png"}},
    }
    sent = s3_object_event(record)
    received = event_from_http(*binary_http(sent))
    assert (received["type"], received["subject"]) == (S3_PUT, "images/cat 1.png")
    assert matching(base, received.get_attributes()) == {IMAGES}


def test_a_dataset_archive_does_not_go_to_the_inference_function(
    base: dict[str, Trigger],
) -> None:
    assert IMAGES not in matching(base, s3("datasets/x.zip"))


def test_an_image_deletion_triggers_nothing(base: dict[str, Trigger]) -> None:
    assert matching(base, s3("images/cat.png", "ObjectRemoved:Delete")) == set()


@pytest.mark.parametrize(
    "key",
    [
        "datasets/digits.zip",
        "datasets/digits.tar.gz",
        "datasets/digits.tgz",
        "datasets/digits/manifest.json",
    ],
)
def test_a_dataset_archive_or_manifest_goes_to_the_training_function_only(
    base: dict[str, Trigger], key: str
) -> None:
    assert matching(base, s3(key, "ObjectCreated:CompleteMultipartUpload")) == {DATASETS}


@pytest.mark.parametrize(
    "key", ["datasets/digits/3/a.png", "images/digits.zip", "datasets/digits.zip.part"]
)
def test_a_single_dataset_image_or_an_archive_elsewhere_starts_no_training(
    base: dict[str, Trigger], key: str
) -> None:
    assert DATASETS not in matching(base, s3(key))


def test_model_published_goes_to_the_inference_function_only(base: dict[str, Trigger]) -> None:
    published = event(MODEL_PUBLISHED, subject="digits").get_attributes()
    assert matching(base, published) == {PUBLISHED}
    assert base[PUBLISHED].subscriber == "lepton-infer"


def test_model_published_delivery_inherits_the_broker_timeout_and_dead_letter_sink(
    base: dict[str, Trigger],
) -> None:
    delivery = base[PUBLISHED].delivery
    assert (delivery.retry, delivery.backoff_delay) == (3, 1.0)
    assert (delivery.timeout, delivery.dead_letter_sink) == (60.0, "lepton-dead-letters")


@pytest.mark.parametrize("reply_type", [INFERENCE_COMPLETED, INFERENCE_FAILED, TRAINING_FAILED])
@pytest.mark.parametrize("subject", [None, "images/cat.png", "datasets/digits.zip", "digits"])
def test_no_trigger_routes_a_result_or_failure_reply_anywhere(
    base: dict[str, Trigger], reply_type: str, subject: str | None
) -> None:
    attributes = {"subject": subject} if subject else {}
    assert matching(base, event(reply_type, **attributes).get_attributes()) == set()


def test_no_function_receives_a_reply_type_it_emits(base: dict[str, Trigger]) -> None:
    emits = {
        "lepton-infer": {INFERENCE_COMPLETED, INFERENCE_FAILED},
        "lepton-train": {MODEL_PUBLISHED, TRAINING_FAILED},
    }
    assert set().union(*emits.values()) == REPLY_TYPES
    for reply_type in REPLY_TYPES:
        for subject in ("images/x.png", "datasets/x.zip", "digits"):
            attributes = event(reply_type, subject=subject).get_attributes()
            for name in matching(base, attributes):
                assert reply_type not in emits[base[name].subscriber], (name, reply_type)


# -- filter dialects -----------------------------------------------------------------------------

ATTRS = {"type": "com.example.created", "source": "/bucket/a", "subject": "images/cat.png"}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ({"exact": {"type": "com.example.created"}}, True),
        ({"exact": {"type": "com.example"}}, False),
        ({"exact": {"type": "com.example.created", "subject": "images/dog.png"}}, False),
    ],
)
def test_exact_compares_whole_values_of_every_listed_attribute(
    expression: dict[str, Any], expected: bool
) -> None:
    assert compile_filter(expression)(ATTRS) is expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ({"prefix": {"subject": "images/"}}, True),
        ({"prefix": {"subject": "datasets/"}}, False),
        ({"prefix": {"type": "com.example.", "source": "/bucket/"}}, True),
    ],
)
def test_prefix_matches_the_start_of_values(expression: dict[str, Any], expected: bool) -> None:
    assert compile_filter(expression)(ATTRS) is expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [({"suffix": {"subject": ".png"}}, True), ({"suffix": {"subject": ".zip"}}, False)],
)
def test_suffix_matches_the_end_of_values(expression: dict[str, Any], expected: bool) -> None:
    assert compile_filter(expression)(ATTRS) is expected


@pytest.mark.parametrize("dialect", ["exact", "prefix", "suffix"])
def test_a_missing_attribute_matches_no_exact_prefix_or_suffix(dialect: str) -> None:
    assert compile_filter({dialect: {"dataschema": ""}})(ATTRS) is False


def test_all_needs_every_nested_expression() -> None:
    both = compile_filter(
        {"all": [{"prefix": {"subject": "images/"}}, {"suffix": {"subject": ".png"}}]}
    )
    one = compile_filter(
        {"all": [{"prefix": {"subject": "images/"}}, {"suffix": {"subject": ".jpg"}}]}
    )
    assert (both(ATTRS), one(ATTRS)) == (True, False)


def test_any_needs_one_nested_expression() -> None:
    some = compile_filter(
        {"any": [{"suffix": {"subject": ".jpg"}}, {"suffix": {"subject": ".png"}}]}
    )
    none = compile_filter(
        {"any": [{"suffix": {"subject": ".jpg"}}, {"suffix": {"subject": ".gif"}}]}
    )
    assert (some(ATTRS), none(ATTRS)) == (True, False)


def test_not_negates_its_expression_including_a_missing_attribute() -> None:
    assert compile_filter({"not": {"prefix": {"subject": "images/"}}})(ATTRS) is False
    assert compile_filter({"not": {"exact": {"dataschema": "x"}}})(ATTRS) is True


def test_filters_nest_all_any_and_not() -> None:
    predicate = compile_filter(
        {
            "all": [
                {"prefix": {"type": "com.example."}},
                {"any": [{"suffix": {"subject": ".png"}}, {"suffix": {"subject": ".jpg"}}]},
                {"not": {"prefix": {"subject": "images/private/"}}},
            ]
        }
    )
    assert predicate(ATTRS) is True
    assert predicate({**ATTRS, "subject": "images/private/cat.png"}) is False


def test_a_filters_list_needs_every_entry() -> None:
    predicate = trigger_predicate(
        {"filters": [{"exact": {"type": "com.example.created"}}, {"prefix": {"subject": "x/"}}]}
    )
    assert predicate(ATTRS) is False
    assert predicate({**ATTRS, "subject": "x/cat.png"}) is True


def test_legacy_attributes_filter_matches_exact_values() -> None:
    predicate = trigger_predicate({"filter": {"attributes": {"type": "com.example.created"}}})
    assert predicate(ATTRS) is True
    assert predicate({**ATTRS, "type": "com.example.deleted"}) is False


def test_legacy_attributes_empty_value_matches_any_value_of_a_present_attribute() -> None:
    predicate = trigger_predicate({"filter": {"attributes": {"subject": ""}}})
    assert predicate(ATTRS) is True
    assert predicate({"type": "com.example.created", "source": "/s"}) is False


def test_no_filter_matches_every_event() -> None:
    assert trigger_predicate({})(ATTRS) is True
    assert trigger_predicate({"filter": {}})(ATTRS) is True


def test_filters_take_precedence_over_the_legacy_filter() -> None:
    predicate = trigger_predicate(
        {
            "filters": [{"prefix": {"subject": "images/"}}],
            "filter": {"attributes": {"type": "never.this"}},
        }
    )
    assert predicate(ATTRS) is True


def test_cesql_is_refused() -> None:
    with pytest.raises(TriggerConfigError, match="CESQL"):
        compile_filter({"cesql": "type = 'com.example.created'"})


def test_cesql_is_refused_when_the_manifests_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {name: sql}
        spec:
          broker: main
          filters:
            - any:
                - cesql: "subject LIKE 'images/%'"
          subscriber: {ref: {kind: Service, name: fn}}
        """,
    )
    with pytest.raises(TriggerConfigError, match="CESQL"):
        load_triggers([path])


@pytest.mark.parametrize(
    "expression",
    [
        {"regex": {"subject": ".*"}},
        {"exact": {"type": "a"}, "prefix": {"subject": "b"}},
        {"exact": {}},
        {"all": {"exact": {"type": "a"}}},
    ],
)
def test_malformed_filter_expressions_are_refused(expression: dict[str, Any]) -> None:
    with pytest.raises(TriggerConfigError):
        compile_filter(expression)


# -- delivery ------------------------------------------------------------------------------------


def test_broker_delivery_defaults_are_merged_under_the_trigger_delivery(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        BROKER
        + """
    apiVersion: eventing.knative.dev/v1
    kind: Trigger
    metadata: {name: own}
    spec:
      broker: main
      subscriber: {ref: {kind: Service, name: fn}}
      delivery: {retry: 1, backoffDelay: PT0.1S}
    """,
    )
    (trigger,) = load_triggers([path])
    assert trigger.delivery == Delivery(
        retry=1,
        backoff_policy="exponential",
        backoff_delay=0.1,
        timeout=10.0,
        dead_letter_sink="graveyard",
    )


def test_a_trigger_without_delivery_gets_the_broker_delivery(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        BROKER
        + """
    apiVersion: eventing.knative.dev/v1
    kind: Trigger
    metadata: {name: bare}
    spec:
      broker: main
      subscriber: {uri: "http://127.0.0.1:9/hook"}
    """,
    )
    (trigger,) = load_triggers([path])
    assert trigger.delivery == Delivery(4, "linear", 2.0, 10.0, "graveyard")
    assert trigger.subscriber == "http://127.0.0.1:9/hook"


def test_a_trigger_of_another_broker_gets_no_delivery_defaults_and_can_be_left_out(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        BROKER
        + """
    apiVersion: eventing.knative.dev/v1
    kind: Trigger
    metadata: {name: elsewhere}
    spec:
      broker: other
      subscriber: {ref: {kind: Service, name: fn}, uri: /events}
    """,
    )
    (trigger,) = load_triggers([path])
    assert (trigger.subscriber, trigger.delivery) == ("fn/events", Delivery())
    assert load_triggers([path], broker="main") == []


def test_a_trigger_without_subscriber_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        kind: Trigger
        metadata: {name: nowhere}
        spec: {broker: main}
        """,
    )
    with pytest.raises(TriggerConfigError, match="nowhere"):
        load_triggers([path])


@pytest.mark.parametrize(
    "spec", [{"backoffPolicy": "fibonacci"}, {"backoffDelay": "5 seconds"}, {"timeout": "PTX"}]
)
def test_invalid_delivery_settings_are_refused(spec: dict[str, str]) -> None:
    with pytest.raises(TriggerConfigError):
        parse_delivery(spec)


def test_iso_8601_durations_are_read_as_seconds() -> None:
    delivery = parse_delivery({"backoffDelay": "PT0.25S", "timeout": "PT1M30S"})
    assert delivery is not None
    assert (delivery.backoff_delay, delivery.timeout) == (0.25, 90.0)


def test_exponential_delay_doubles_from_the_backoff_delay() -> None:
    delivery = Delivery(retry=4, backoff_policy="exponential", backoff_delay=0.5)
    assert [delivery.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]


def test_linear_delay_grows_by_the_backoff_delay() -> None:
    delivery = Delivery(retry=3, backoff_policy="linear", backoff_delay=0.5)
    assert [delivery.delay(n) for n in (1, 2, 3)] == [0.5, 1.0, 1.5]
