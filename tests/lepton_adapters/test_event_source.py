"""The event-source adapter: forwarding, the MinIO webhook, and SQS against a real moto server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from cloudevents.http import CloudEvent, from_http
from werkzeug.test import Client

from lepton_adapters.event_source import (
    MAX_WEBHOOK_BODY_BYTES,
    DeliveryError,
    Forwarder,
    SourceAdapter,
    SqsPoller,
    WebhookApp,
)
from lepton_runtime.errors import ConfigurationError, EventFormatError
from lepton_runtime.events.inbound import parse_cloudevent
from lepton_runtime.settings import S3Settings, Settings

EVENTS = Path(__file__).resolve().parents[1] / "data" / "events"
KEY = "images/cat 1.png"


def load(name: str) -> Any:
    return json.loads((EVENTS / name).read_text())


@dataclass
class Sink:
    """An HTTP sink recording every request; answers `statuses` in order, then `default`."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    default: int = 202
    delay: float = 0.0
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def events(self) -> list[CloudEvent]:
        return [from_http(headers, body) for headers, body in list(self.requests)]


@pytest.fixture
def sink() -> Iterator[Sink]:
    recorder = Sink()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            recorder.requests.append((dict(self.headers.items()), body))
            time.sleep(recorder.delay)
            status = recorder.statuses.pop(0) if recorder.statuses else recorder.default
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}/"
    yield recorder
    server.shutdown()
    server.server_close()


def wait_for(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s")


# Forwarder


def test_forwarder_posts_one_binary_cloudevent_per_record(sink: Sink) -> None:
    forwarded = Forwarder(sink.url, timeout=2).forward(load("s3_object_created_moto.json"))
    (event,) = sink.events()
    assert sink.requests[0][0]["ce-type"] == "com.amazonaws.s3.ObjectCreated:Put"
    assert forwarded.event_ids == (event["id"],)
    assert parse_cloudevent(event).refs[0].key == KEY


def test_forwarder_acknowledges_a_test_event_without_posting(sink: Sink) -> None:
    forwarded = Forwarder(sink.url, timeout=2).forward(load("s3_test_event.json"))
    assert (forwarded.event_ids, len(forwarded.ignored), sink.requests) == ((), 1, [])


def test_forwarder_adds_ce_override_extensions(sink: Sink) -> None:
    forwarder = Forwarder(sink.url, timeout=2, extensions={"cluster": "dev"})
    forwarder.forward(load("s3_object_created.json"))
    assert sink.events()[0]["cluster"] == "dev"


def test_forwarder_presents_the_oidc_token_a_sinkbinding_mounts(sink: Sink, tmp_path) -> None:
    token = tmp_path / "token"
    forwarder = Forwarder(sink.url, timeout=2, token_file=token)
    forwarder.forward(load("s3_object_created.json"))  # no file (OIDC off): no header
    token.write_text("first\n")
    forwarder.forward(load("s3_object_created.json"))
    token.write_text("refreshed")  # Knative renews the file: the next POST reads it again
    forwarder.forward(load("s3_object_created.json"))
    sent = [headers.get("Authorization") for headers, *_ in sink.requests]
    assert sent == [None, "Bearer first", "Bearer refreshed"]


def test_forwarder_raises_when_the_sink_refuses(sink: Sink) -> None:
    sink.default = 500
    with pytest.raises(DeliveryError, match="500"):
        Forwarder(sink.url, timeout=2).forward(load("s3_object_created.json"))


def test_forwarder_raises_when_the_sink_is_unreachable() -> None:
    with pytest.raises(DeliveryError, match="unreachable"):
        Forwarder("http://127.0.0.1:9/", timeout=1).forward(load("s3_object_created.json"))


def test_forwarder_refuses_a_sink_that_is_no_url() -> None:
    with pytest.raises(ConfigurationError):
        Forwarder("broker-ingress", timeout=1)


def test_forwarder_raises_for_a_body_that_is_no_notification(sink: Sink) -> None:
    with pytest.raises(EventFormatError):
        Forwarder(sink.url, timeout=2).forward({"hello": "world"})


# MinIO webhook


@pytest.fixture
def webhook(sink: Sink) -> Client:
    return Client(WebhookApp(Forwarder(sink.url, timeout=2), token="s3cret"))


AUTH = {"Authorization": "Bearer s3cret"}


def test_webhook_answers_head_without_a_token(webhook: Client) -> None:
    assert webhook.head("/").status_code == 200


def test_webhook_forwards_a_minio_body(webhook: Client, sink: Sink) -> None:
    response = webhook.post("/", json=load("minio_object_created.json"), headers=AUTH)
    assert response.status_code == 200
    assert parse_cloudevent(sink.events()[0]).refs[0].key == KEY


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_webhook_refuses_a_missing_or_wrong_token(
    webhook: Client, sink: Sink, headers: dict[str, str]
) -> None:
    response = webhook.post("/", json=load("minio_object_created.json"), headers=headers)
    assert (response.status_code, sink.requests) == (401, [])


def test_webhook_answers_503_when_the_sink_refuses(webhook: Client, sink: Sink) -> None:
    sink.default = 500
    response = webhook.post("/", json=load("minio_object_created.json"), headers=AUTH)
    assert response.status_code == 503


@pytest.mark.parametrize("body", [b"{not json", b'{"hello": "world"}'])
def test_webhook_answers_400_to_bodies_that_are_no_notification(
    webhook: Client, body: bytes
) -> None:
    response = webhook.post("/", data=body, headers=AUTH, content_type="application/json")
    assert response.status_code == 400


def test_webhook_without_a_token_accepts_anyone(sink: Sink) -> None:
    client = Client(WebhookApp(Forwarder(sink.url, timeout=2)))
    assert client.post("/", json=load("minio_object_created.json")).status_code == 200


# The SQS poller against a stand-in client (precise and fast)


class FakeSqs:
    """Just the SQS calls the poller makes, recorded."""

    def __init__(self, bodies: list[str]) -> None:
        self.messages = [
            {"MessageId": f"m{i}", "ReceiptHandle": f"r{i}", "Body": body}
            for i, body in enumerate(bodies)
        ]
        self.deleted: list[str] = []
        self.released: list[str] = []

    def receive_message(self, MaxNumberOfMessages: int = 1, **_: Any) -> dict[str, Any]:
        messages = self.messages[:MaxNumberOfMessages]
        self.messages = self.messages[MaxNumberOfMessages:]
        return {"Messages": messages}

    def delete_message(self, QueueUrl: str, ReceiptHandle: str) -> None:
        self.deleted.append(ReceiptHandle)

    def change_message_visibility_batch(self, QueueUrl: str, Entries: list[Any]) -> None:
        self.released.extend(entry["ReceiptHandle"] for entry in Entries)


class Poll:
    """A poller over a fake queue; `once()` receives one batch and waits for its handling."""

    def __init__(self, client: FakeSqs, sink: Sink, stop: threading.Event | None) -> None:
        forwarder = Forwarder(sink.url, timeout=2)
        self.poller = SqsPoller(
            client, "q", forwarder, wait_seconds=0, stop=stop or threading.Event(), concurrency=4
        )

    def poll_once(self) -> int:
        received = self.poller.poll_once()
        assert self.poller.join(timeout=10)
        return received


def poller(client: FakeSqs, sink: Sink, stop: threading.Event | None = None) -> Poll:
    return Poll(client, sink, stop)


def test_poller_deletes_delivered_and_test_event_messages(sink: Sink) -> None:
    client = FakeSqs(
        [json.dumps(load("s3_object_created.json")), json.dumps(load("s3_test_event.json"))]
    )
    poller(client, sink).poll_once()
    assert (sorted(client.deleted), len(sink.requests)) == (["r0", "r1"], 1)


def test_poller_handles_messages_of_a_batch_concurrently(sink: Sink) -> None:
    sink.delay = 0.5  # each delivery takes half a second
    client = FakeSqs([json.dumps(load("s3_object_created.json"))] * 4)
    started = time.monotonic()
    poller(client, sink).poll_once()
    assert len(client.deleted) == 4
    assert time.monotonic() - started < 1.5  # four deliveries at once, not one after another


def test_poller_keeps_a_message_the_sink_refused(sink: Sink) -> None:
    sink.default = 503
    client = FakeSqs([json.dumps(load("s3_object_created.json"))])
    poller(client, sink).poll_once()
    assert client.deleted == []


@pytest.mark.parametrize("body", ["{not json", '{"hello": "world"}'])
def test_poller_keeps_a_poison_message_for_the_dead_letter_queue(sink: Sink, body: str) -> None:
    client = FakeSqs([body])
    poller(client, sink).poll_once()
    assert (client.deleted, sink.requests) == ([], [])


def test_poller_releases_unhandled_messages_when_stopping(sink: Sink) -> None:
    stop = threading.Event()
    stop.set()
    client = FakeSqs([json.dumps(load("s3_object_created.json"))] * 2)
    poller(client, sink, stop).poll_once()
    assert (client.released, client.deleted) == (["r0", "r1"], [])


# Configuration


def test_adapter_needs_a_sink() -> None:
    with pytest.raises(ConfigurationError, match="K_SINK"):
        SourceAdapter(Settings(queue_url="http://q"))


def test_adapter_needs_an_input() -> None:
    with pytest.raises(ConfigurationError, match="LEPTON_SQS_QUEUE_URL"):
        SourceAdapter(Settings(sink="http://sink/"))


# Against a real moto server: S3 notification -> SQS -> adapter -> sink


@dataclass
class Pipeline:
    s3: Any
    sqs: Any
    bucket: str
    queue_url: str
    dlq_url: str

    def settings(self, sink: Sink) -> Settings:
        return Settings(
            sink=sink.url,
            queue_url=self.queue_url,
            poll_wait_seconds=1,
            sink_timeout=2.0,
            s3=S3Settings(connect_timeout=1.0, read_timeout=5.0, max_attempts=2),
        )

    def messages_left(self, url: str) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return sum(int(value) for value in attributes.values())


@pytest.fixture
def pipeline(moto_endpoint: str) -> Pipeline:
    """A bucket notifying a queue (visibility 1 s) whose dead-letter queue takes it after 2."""
    suffix = uuid.uuid4().hex[:10]
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    bucket = f"lepton-uploads-{suffix}"
    s3.create_bucket(Bucket=bucket)
    dlq_url = sqs.create_queue(QueueName=f"lepton-dlq-{suffix}")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
    redrive = {"deadLetterTargetArn": dlq_arn["Attributes"]["QueueArn"], "maxReceiveCount": "2"}
    queue_url = sqs.create_queue(
        QueueName=f"lepton-events-{suffix}",
        Attributes={"VisibilityTimeout": "1", "RedrivePolicy": json.dumps(redrive)},
    )["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {"QueueArn": queue_arn["Attributes"]["QueueArn"], "Events": ["s3:ObjectCreated:*"]}
            ]
        },
    )
    return Pipeline(s3, sqs, bucket, queue_url, dlq_url)


@contextmanager
def running(adapter: SourceAdapter) -> Iterator[SourceAdapter]:
    adapter.start()
    try:
        yield adapter
    finally:
        adapter.close()


@pytest.mark.slow
def test_an_upload_reaches_the_sink_as_a_cloudevent(pipeline: Pipeline, sink: Sink) -> None:
    pipeline.s3.put_object(Bucket=pipeline.bucket, Key=KEY, Body=b"png")
    with running(SourceAdapter(pipeline.settings(sink))):
        (event,) = wait_for(sink.events)
        wait_for(lambda: pipeline.messages_left(pipeline.queue_url) == 0)
    assert event["type"] == "com.amazonaws.s3.ObjectCreated:Put"
    ref = parse_cloudevent(event).refs[0]
    assert (ref.bucket, ref.key) == (pipeline.bucket, KEY)


@pytest.mark.slow
def test_a_sink_answering_500_gets_the_event_again(pipeline: Pipeline, sink: Sink) -> None:
    sink.statuses = [500]
    pipeline.s3.put_object(Bucket=pipeline.bucket, Key=KEY, Body=b"png")
    with running(SourceAdapter(pipeline.settings(sink))):
        first, second = wait_for(lambda: len(sink.requests) >= 2 and sink.events())
        wait_for(lambda: pipeline.messages_left(pipeline.queue_url) == 0)
    assert first["id"] == second["id"]
    assert parse_cloudevent(second).refs[0].key == KEY


@pytest.mark.slow
def test_a_sink_that_never_accepts_sends_the_message_to_the_dead_letter_queue(
    pipeline: Pipeline, sink: Sink
) -> None:
    sink.default = 500
    pipeline.s3.put_object(Bucket=pipeline.bucket, Key=KEY, Body=b"png")
    with running(SourceAdapter(pipeline.settings(sink))):
        wait_for(lambda: pipeline.messages_left(pipeline.dlq_url) == 1, timeout=15)
    (message,) = pipeline.sqs.receive_message(QueueUrl=pipeline.dlq_url)["Messages"]
    assert json.loads(message["Body"])["Records"][0]["s3"]["object"]["key"] == "images%2Fcat+1.png"
    assert len(sink.requests) == 2


def test_the_webhook_listener_forwards_over_http(sink: Sink) -> None:
    settings = Settings(sink=sink.url, webhook_token="t0k")
    with running(SourceAdapter(settings, webhook_host="127.0.0.1", webhook_port=0)) as adapter:
        assert adapter.webhook is not None
        url = f"http://127.0.0.1:{adapter.webhook.port}/minio/events"
        assert requests.head(url, timeout=5).status_code == 200
        response = requests.post(
            url,
            json=load("minio_object_created.json"),
            headers={"Authorization": "Bearer t0k"},
            timeout=5,
        )
    assert response.status_code == 200
    assert parse_cloudevent(sink.events()[0]).refs[0].key == KEY


@pytest.mark.slow
def test_the_program_stops_cleanly_on_sigterm(pipeline: Pipeline, sink: Sink) -> None:
    env = {
        **os.environ,
        "K_SINK": sink.url,
        "LEPTON_SQS_QUEUE_URL": pipeline.queue_url,
        "LEPTON_SQS_WAIT_SECONDS": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "lepton_adapters.event_source"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        while json.loads(process.stdout.readline())["message"] != "event source started":
            pass
        wait_for(lambda: pipeline.messages_left(pipeline.queue_url) == 0)  # test event handled
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
    lines = [json.loads(line) for line in process.stdout.read().splitlines()]
    assert lines[-1]["message"] == "event source stopped"


def test_a_webhook_beyond_loopback_needs_a_token(sink: Sink) -> None:
    with pytest.raises(ConfigurationError, match="LEPTON_WEBHOOK_TOKEN"):
        SourceAdapter(Settings(sink=sink.url), webhook_host="0.0.0.0", webhook_port=0)


def test_a_webhook_on_loopback_may_go_without_a_token(sink: Sink) -> None:
    adapter = SourceAdapter(Settings(sink=sink.url), webhook_host="127.0.0.1", webhook_port=0)
    assert adapter.webhook is not None


def test_a_chunked_webhook_body_over_the_limit_is_a_json_413(sink: Sink) -> None:
    settings = Settings(sink=sink.url, webhook_token="t0k")

    def chunks() -> Iterator[bytes]:
        for _ in range(4):
            yield b" " * (MAX_WEBHOOK_BODY_BYTES // 2)

    with running(SourceAdapter(settings, webhook_host="127.0.0.1", webhook_port=0)) as adapter:
        assert adapter.webhook is not None
        response = requests.post(
            f"http://127.0.0.1:{adapter.webhook.port}/",
            data=chunks(),
            headers={"Authorization": "Bearer t0k", "Content-Type": "application/json"},
            timeout=10,
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert sink.requests == []


def test_a_deeply_nested_webhook_body_is_a_400_not_a_crash(sink: Sink) -> None:
    settings = Settings(sink=sink.url, webhook_token="t0k")
    with running(SourceAdapter(settings, webhook_host="127.0.0.1", webhook_port=0)) as adapter:
        assert adapter.webhook is not None
        response = requests.post(
            f"http://127.0.0.1:{adapter.webhook.port}/",
            data=b"[" * 100_000,
            headers={"Authorization": "Bearer t0k"},
            timeout=10,
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_event"
