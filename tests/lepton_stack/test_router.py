"""The development router against real HTTP subscribers: delivery, retries, dead letters,
replies, ingress and status; and `router_main` as the process `lepton up` runs."""

from __future__ import annotations

import base64
import itertools
import json
import logging
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from cloudevents.http import CloudEvent
from stack_support import (
    S3_PUT,
    Answer,
    Subscriber,
    event,
    free_port,
    s3_event,
    wait_for,
)
from werkzeug.test import Client

from lepton_runtime.events.outbound import binary_http, structured_http
from lepton_stack.router import Router
from lepton_stack.triggers import Delivery, Trigger, compile_filter

Factory = Callable[..., Router]
FAST = Delivery(retry=3, backoff_policy="exponential", backoff_delay=0.02, timeout=5)


def trigger(
    name: str = "images",
    subscriber: str = "fn",
    expression: dict[str, Any] | None = None,
    delivery: Delivery = FAST,
) -> Trigger:
    return Trigger(
        name=name,
        broker="test",
        subscriber=subscriber,
        matches=compile_filter(expression or {"prefix": {"subject": "images/"}}),
        delivery=delivery,
    )


def with_sink(delivery: Delivery, sink: str | None) -> Delivery:
    return Delivery(
        delivery.retry, delivery.backoff_policy, delivery.backoff_delay, delivery.timeout, sink
    )


def post(client: Client, ce: CloudEvent) -> Any:
    headers, body = binary_http(ce)
    return client.post("/", data=body, headers=headers)


def dead_letters(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


# -- delivery ------------------------------------------------------------------------------------


def test_delivers_in_binary_mode_to_the_subscriber(
    make_router: Factory, subscriber: Subscriber
) -> None:
    router = make_router([trigger()], {"fn": subscriber.url})
    sent = s3_event("images/cat 1.png")
    (result,) = router.route(sent)
    assert (result.status, result.attempts, result.dead_lettered) == (202, 1, False)
    (request,) = subscriber.received
    assert request.path == "/"
    assert request.headers["ce-type"] == S3_PUT
    assert request.headers["ce-subject"] == "images/cat%201.png"  # the HTTP binding's encoding
    assert request.headers["ce-id"] == sent["id"]
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.body) == sent.get_data()
    assert request.event()["subject"] == "images/cat 1.png"


def test_asks_subscribers_for_reply_events(make_router: Factory, subscriber: Subscriber) -> None:
    make_router([trigger()], {"fn": subscriber.url}).route(s3_event("images/a.png"))
    assert subscriber.received[0].headers.get("Prefer") == "reply"


def test_a_subscriber_name_with_a_path_is_resolved_against_its_address(
    make_router: Factory, subscriber: Subscriber
) -> None:
    router = make_router([trigger(subscriber="fn/hooks/s3")], {"fn": subscriber.url + "/"})
    router.route(s3_event("images/a.png"))
    assert subscriber.received[0].path == "/hooks/s3"


def test_an_event_no_trigger_matches_is_delivered_nowhere(
    make_router: Factory, subscriber: Subscriber
) -> None:
    router = make_router([trigger()], {"fn": subscriber.url})
    assert router.route(s3_event("datasets/x.zip")) == []
    assert subscriber.received == []


def test_every_matching_trigger_gets_the_event_in_parallel(
    make_router: Factory, subscribers: Callable[[], Subscriber]
) -> None:
    first, second = subscribers(), subscribers()
    first.default = second.default = Answer(202, delay=0.5)
    router = make_router(
        [trigger("one", "a"), trigger("two", "b")], {"a": first.url, "b": second.url}
    )
    started = time.monotonic()
    results = router.route(s3_event("images/a.png"))
    assert sorted(r.trigger for r in results) == ["one", "two"]
    assert (len(first.received), len(second.received)) == (1, 1)
    assert time.monotonic() - started < 0.95  # one after the other would take 1 s


def test_retries_a_503_until_the_subscriber_takes_the_event(
    make_router: Factory, subscriber: Subscriber
) -> None:
    subscriber.answer(503, 503)
    router = make_router([trigger()], {"fn": subscriber.url})
    (result,) = router.route(s3_event("images/a.png"))
    assert (result.status, result.attempts, result.dead_lettered) == (202, 3, False)
    assert len(subscriber.received) == 3
    assert len({r.headers["ce-id"] for r in subscriber.received}) == 1
    assert router.status()["retries"] == {"images": 2}


@pytest.mark.parametrize("status", [404, 408, 409, 429, 500, 504])
def test_retries_the_statuses_knative_retries(
    make_router: Factory, subscriber: Subscriber, status: int
) -> None:
    subscriber.answer(status)
    (result,) = make_router([trigger()], {"fn": subscriber.url}).route(s3_event("images/a.png"))
    assert (result.status, result.attempts) == (202, 2)


@pytest.mark.parametrize("status", [400, 401, 403, 413, 422])
def test_does_not_retry_other_4xx_and_dead_letters_at_once(
    make_router: Factory, subscriber: Subscriber, tmp_path: Path, status: int
) -> None:
    subscriber.default = Answer(status)
    delivery = with_sink(FAST, f"dir:{tmp_path}")
    router = make_router([trigger(delivery=delivery)], {"fn": subscriber.url})
    (result,) = router.route(s3_event("images/a.png"))
    assert (result.status, result.attempts, result.dead_lettered) == (status, 1, True)
    assert len(subscriber.received) == 1
    assert len(dead_letters(tmp_path)) == 1


def test_gives_up_after_the_last_retry(make_router: Factory, subscriber: Subscriber) -> None:
    subscriber.default = Answer(503, body=b"overloaded")
    (result,) = make_router([trigger()], {"fn": subscriber.url}).route(s3_event("images/a.png"))
    assert (result.status, result.attempts, result.dead_lettered) == (503, 4, True)
    assert result.error == "overloaded"
    assert len(subscriber.received) == 4


def test_waits_the_exponential_backoff_between_attempts(
    make_router: Factory, subscriber: Subscriber
) -> None:
    subscriber.default = Answer(503)
    delivery = Delivery(retry=3, backoff_policy="exponential", backoff_delay=0.05, timeout=5)
    make_router([trigger(delivery=delivery)], {"fn": subscriber.url}).route(
        s3_event("images/a.png")
    )
    times = [r.at for r in subscriber.received]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    for gap, expected in zip(gaps, (0.05, 0.1, 0.2), strict=True):
        assert expected - 0.01 <= gap < expected + 0.5


def test_retries_connection_errors_then_dead_letters_with_code_0(
    make_router: Factory, tmp_path: Path
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    delivery = with_sink(Delivery(retry=2, backoff_delay=0.01, timeout=2), f"dir:{tmp_path}")
    router = make_router([trigger(delivery=delivery)], {"fn": closed})
    (result,) = router.route(s3_event("images/a.png"))
    assert (result.status, result.attempts, result.dead_lettered) == (None, 3, True)
    assert "ConnectionError" in result.error
    (letter,) = dead_letters(tmp_path)
    assert letter["event"]["knativeerrorcode"] == "0"


def test_a_slow_attempt_times_out_and_is_retried(
    make_router: Factory, subscriber: Subscriber
) -> None:
    subscriber.answer(Answer(202, delay=2.0))
    delivery = Delivery(retry=1, backoff_delay=0.01, timeout=0.3)
    started = time.monotonic()
    (result,) = make_router([trigger(delivery=delivery)], {"fn": subscriber.url}).route(
        s3_event("images/a.png")
    )
    assert (result.status, result.attempts) == (202, 2)
    assert time.monotonic() - started < 1.5


def test_stop_interrupts_a_backoff_wait(make_router: Factory, subscriber: Subscriber) -> None:
    subscriber.default = Answer(503)
    delivery = Delivery(retry=5, backoff_delay=10.0, timeout=5)
    router = make_router([trigger(delivery=delivery)], {"fn": subscriber.url})
    started = time.monotonic()
    threading.Timer(0.2, router.stop).start()
    (result,) = router.route(s3_event("images/a.png"))
    assert result.attempts == 1
    assert time.monotonic() - started < 2


# -- dead letters --------------------------------------------------------------------------------


def test_dead_letter_file_holds_the_event_its_data_and_the_knative_error_extensions(
    make_router: Factory, subscriber: Subscriber, tmp_path: Path
) -> None:
    subscriber.default = Answer(500, body=b"model exploded")
    folder = tmp_path / "dead-letters"
    delivery = with_sink(Delivery(retry=1, backoff_delay=0.01), "lepton-dead-letters")
    router = make_router(
        [trigger(delivery=delivery)],
        {"fn": subscriber.url, "lepton-dead-letters": f"dir:{folder}"},
    )
    sent = s3_event("images/cat 1.png")
    router.route(sent)
    (letter,) = dead_letters(folder)
    dead = letter["event"]
    assert letter["trigger"] == "images"
    assert (dead["id"], dead["type"], dead["subject"]) == (sent["id"], S3_PUT, "images/cat 1.png")
    assert dead["knativeerrorcode"] == "500"
    assert dead["knativeerrordest"] == subscriber.url + "/"
    assert base64.b64decode(dead["knativeerrordata"]) == b"model exploded"
    assert dead["data"] == sent.get_data()
    assert router.status()["dead_letters"] == {"images": 1}


def test_dead_letter_file_keeps_binary_data_recoverable(
    make_router: Factory, subscriber: Subscriber, tmp_path: Path
) -> None:
    subscriber.default = Answer(400)
    router = make_router(
        [trigger(delivery=with_sink(FAST, f"dir:{tmp_path}"))], {"fn": subscriber.url}
    )
    png = b"\x89PNG\r\n\x1a\n\x00\xff"
    sent = CloudEvent(
        {
            "type": S3_PUT,
            "source": "/tests",
            "subject": "images/a.png",
            "datacontenttype": "image/png",
        },
        png,
    )
    router.route(sent)
    (letter,) = dead_letters(tmp_path)
    assert base64.b64decode(letter["event"]["data_base64"]) == png


def test_dead_letters_to_a_url_sink_in_binary_mode(
    make_router: Factory, subscribers: Callable[[], Subscriber]
) -> None:
    function, sink = subscribers(), subscribers()
    function.default = Answer(422, body=b"not an image")
    router = make_router(
        [trigger(delivery=with_sink(FAST, "graveyard"))],
        {"fn": function.url, "graveyard": sink.url},
    )
    sent = s3_event("images/a.png")
    router.route(sent)
    (request,) = sink.received
    assert request.headers["ce-knativeerrorcode"] == "422"
    dead = request.event()
    assert (dead["id"], dead["knativeerrordest"]) == (sent["id"], function.url + "/")
    assert dead.get_data() == sent.get_data()


def test_without_a_dead_letter_sink_a_failed_event_is_dropped_and_counted(
    make_router: Factory, subscriber: Subscriber
) -> None:
    subscriber.default = Answer(400)
    router = make_router([trigger()], {"fn": subscriber.url})
    (result,) = router.route(s3_event("images/a.png"))
    assert result.dead_lettered
    assert router.status()["dead_letters"] == {"images": 1}


# -- replies -------------------------------------------------------------------------------------


def reply_event(type_: str = "ai.lepton.model.published") -> CloudEvent:
    return event(type_, {"name": "digits", "version": "v2"}, subject="digits")


def test_a_reply_event_is_routed_to_the_trigger_that_matches_it(
    make_router: Factory, subscribers: Callable[[], Subscriber]
) -> None:
    train, infer = subscribers(), subscribers()
    reply = reply_event()
    train.answer(Answer.event(reply))
    router = make_router(
        [
            trigger("datasets", "train", {"prefix": {"subject": "datasets/"}}),
            trigger("published", "infer", {"exact": {"type": "ai.lepton.model.published"}}),
        ],
        {"train": train.url, "infer": infer.url},
    )
    (result,) = router.route(s3_event("datasets/digits.zip"))
    assert result.reply is not None
    wait_for(lambda: infer.received)
    (got,) = infer.events()
    assert (got["id"], got["type"], got.get_data()) == (
        reply["id"],
        reply["type"],
        reply.get_data(),
    )
    wait_for(lambda: router.status()["delivered"].get("published") == 1)
    assert router.status()["replies"] == 1


def test_a_structured_reply_event_is_routed_too(
    make_router: Factory, subscribers: Callable[[], Subscriber]
) -> None:
    train, infer = subscribers(), subscribers()
    headers, body = structured_http(reply_event())
    train.answer(Answer(200, headers, body))
    router = make_router(
        [
            trigger("datasets", "train", {"prefix": {"subject": "datasets/"}}),
            trigger("published", "infer", {"exact": {"type": "ai.lepton.model.published"}}),
        ],
        {"train": train.url, "infer": infer.url},
    )
    router.route(s3_event("datasets/digits.zip"))
    wait_for(lambda: infer.received)


def test_a_202_response_is_not_a_reply_even_if_it_holds_an_event(
    make_router: Factory, subscriber: Subscriber
) -> None:
    subscriber.answer(Answer.event(event("com.example.echo"), status=202))
    router = make_router([trigger(expression={})], {"fn": subscriber.url})
    (result,) = router.route(s3_event("images/a.png"))
    assert result.reply is None
    time.sleep(0.1)
    assert len(subscriber.received) == 1
    assert router.status()["replies"] == 0


def test_a_plain_200_body_is_not_a_reply(make_router: Factory, subscriber: Subscriber) -> None:
    subscriber.answer(Answer(200, {"Content-Type": "application/json"}, b'{"label": "3"}'))
    router = make_router([trigger(expression={})], {"fn": subscriber.url})
    (result,) = router.route(s3_event("images/a.png"))
    assert (result.status, result.reply) == (200, None)
    assert router.status()["replies"] == 0


def test_a_reply_that_cannot_be_routed_is_logged(
    make_router: Factory, subscriber: Subscriber, caplog: pytest.LogCaptureFixture
) -> None:
    subscriber.answer(Answer.event(reply_event()))
    router = make_router(
        [
            trigger("datasets", "fn", {"prefix": {"subject": "datasets/"}}),
            trigger("published", "nobody", {"exact": {"type": "ai.lepton.model.published"}}),
        ],
        {"fn": subscriber.url},
    )
    with caplog.at_level(logging.ERROR, logger="lepton.router"):
        router.route(s3_event("datasets/digits.zip"))
        wait_for(lambda: any(r.message == "reply routing failed" for r in caplog.records))


# -- HTTP ingress --------------------------------------------------------------------------------


def test_ingress_answers_202_with_the_deliveries(
    make_router: Factory, subscriber: Subscriber
) -> None:
    subscriber.answer(503)
    client = Client(make_router([trigger()], {"fn": subscriber.url}))
    response = post(client, s3_event("images/a.png"))
    assert response.status_code == 202
    assert response.get_json() == {
        "deliveries": [{"trigger": "images", "status": 202, "attempts": 2, "dead_lettered": False}]
    }


def test_ingress_accepts_structured_mode(make_router: Factory, subscriber: Subscriber) -> None:
    client = Client(make_router([trigger()], {"fn": subscriber.url}))
    headers, body = structured_http(s3_event("images/a.png"))
    assert client.post("/", data=body, headers=headers).status_code == 202
    assert subscriber.received[0].headers["ce-subject"] == "images/a.png"


def test_ingress_answers_202_when_a_failed_event_was_dead_lettered(
    make_router: Factory, subscriber: Subscriber, tmp_path: Path
) -> None:
    subscriber.default = Answer(400)
    router = make_router(
        [trigger(delivery=with_sink(FAST, f"dir:{tmp_path}"))], {"fn": subscriber.url}
    )
    response = post(Client(router), s3_event("images/a.png"))
    assert response.status_code == 202
    assert response.get_json()["deliveries"][0]["dead_lettered"] is True


def test_ingress_answers_503_when_the_dead_letter_sink_fails_so_the_sender_redelivers(
    make_router: Factory, subscribers: Callable[[], Subscriber]
) -> None:
    function, sink = subscribers(), subscribers()
    function.default, sink.default = Answer(400), Answer(500)
    router = make_router(
        [trigger(delivery=with_sink(FAST, "graveyard"))],
        {"fn": function.url, "graveyard": sink.url},
    )
    assert post(Client(router), s3_event("images/a.png")).status_code == 503


def test_an_unknown_subscriber_name_gives_500_at_ingress(make_router: Factory) -> None:
    client = Client(make_router([trigger(subscriber="nobody")], {"fn": "http://127.0.0.1:9"}))
    response = post(client, s3_event("images/a.png"))
    assert response.status_code == 500
    assert "nobody" in response.get_json()["error"]


def test_a_post_that_is_no_cloudevent_gives_400(
    make_router: Factory, subscriber: Subscriber
) -> None:
    client = Client(make_router([trigger(expression={})], {"fn": subscriber.url}))
    response = client.post("/", data=b'{"hello": "world"}', content_type="application/json")
    assert response.status_code == 400
    assert "not a CloudEvent" in response.get_json()["error"]
    assert subscriber.received == []


def test_health_answers_and_other_methods_are_refused(make_router: Factory) -> None:
    client = Client(make_router([], {}))
    assert client.get("/health").status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.put("/").status_code == 405


def test_status_counts_received_delivered_retried_and_dead_lettered(
    make_router: Factory, subscribers: Callable[[], Subscriber], tmp_path: Path
) -> None:
    good, bad = subscribers(), subscribers()
    good.answer(503)
    bad.default = Answer(400)
    router = make_router(
        [
            trigger("images", "good"),
            trigger(
                "datasets",
                "bad",
                {"prefix": {"subject": "datasets/"}},
                with_sink(FAST, f"dir:{tmp_path}"),
            ),
        ],
        {"good": good.url, "bad": bad.url},
    )
    client = Client(router)
    for key in ("images/a.png", "images/b.png", "datasets/x.zip", "other/y"):
        assert post(client, s3_event(key)).status_code == 202
    status = client.get("/status").get_json()
    assert status == {
        "received": 4,
        "in_flight": 0,
        "replies": 0,
        "delivered": {"images": 2},
        "retries": {"images": 1},
        "dead_letters": {"datasets": 1},
        "triggers": [
            {"name": "images", "subscriber": "good", "kind": "Service", "retry": 3},
            {"name": "datasets", "subscriber": "bad", "kind": "Service", "retry": 3},
        ],
        "jobs": {},
    }


# -- router_main: the process `lepton up` runs ---------------------------------------------------


def test_router_main_serves_the_triggers_of_a_manifest_folder_and_stops_on_sigterm(
    subscriber: Subscriber, tmp_path: Path
) -> None:
    manifests = tmp_path / "knative"
    manifests.mkdir()
    (manifests / "triggers.yaml").write_text(
        textwrap.dedent(
            """
            apiVersion: eventing.knative.dev/v1
            kind: Trigger
            metadata: {name: images}
            spec:
              broker: lepton
              filters: [{prefix: {subject: images/}}]
              subscriber: {ref: {kind: Service, name: lepton-infer}}
              delivery: {retry: 2, backoffDelay: PT0.01S}
            """
        )
    )
    subscriber.answer(503)
    port = free_port()
    router = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lepton_stack.router_main",
            "--port",
            str(port),
            "--manifests",
            str(manifests),
            "--subscriber",
            f"lepton-infer={subscriber.url}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert router.poll() is None, router.stderr.read() if router.stderr else ""
            try:
                return requests.get(base + "/health", timeout=1).ok
            except requests.ConnectionError:
                return False

        wait_for(healthy, timeout=20)
        headers, body = binary_http(s3_event("images/a.png"))
        response = requests.post(base + "/", data=body, headers=headers, timeout=10)
        assert response.status_code == 202
        assert response.json()["deliveries"][0]["attempts"] == 2
        assert requests.get(base + "/status", timeout=2).json()["delivered"] == {"images": 1}
    finally:
        router.send_signal(signal.SIGTERM)
        code = router.wait(10)
    assert code == 0
