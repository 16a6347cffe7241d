"""provision(): buckets, the notification queue with its dead-letter queue, and the S3
notifications, against a real moto server (the S3 + SQS endpoint `lepton up` runs)."""

from __future__ import annotations

import json
import uuid
from urllib.parse import unquote_plus, urlsplit

import pytest

from lepton_stack.stack import DLQ_MAX_RECEIVES, aws_client, provision
from lepton_stack.state import Ports, StackLayout


@pytest.fixture
def layout(moto_server: str, tmp_path) -> StackLayout:  # type: ignore[no-untyped-def]
    """A layout on the shared moto server, with names no other test uses."""
    tag = uuid.uuid4().hex[:8]
    return StackLayout(
        root=tmp_path,
        ports=Ports(s3=int(urlsplit(moto_server).port or 0)),
        uploads=f"up-{tag}",
        results=f"res-{tag}",
        models=f"mod-{tag}",
        queue=f"events-{tag}",
    )


def test_provision_creates_the_three_buckets(layout: StackLayout) -> None:
    provision(layout)
    names = {b["Name"] for b in aws_client(layout, "s3").list_buckets()["Buckets"]}
    assert {layout.uploads, layout.results, layout.models} <= names


def test_the_queue_redrives_to_its_dead_letter_queue(layout: StackLayout) -> None:
    queues = provision(layout)
    sqs = aws_client(layout, "sqs")
    attributes = sqs.get_queue_attributes(QueueUrl=queues["queue_url"], AttributeNames=["All"])[
        "Attributes"
    ]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=queues["dlq_url"], AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    policy = json.loads(attributes["RedrivePolicy"])
    assert policy["deadLetterTargetArn"] == dlq_arn
    assert int(policy["maxReceiveCount"]) == DLQ_MAX_RECEIVES
    assert int(attributes["VisibilityTimeout"]) >= 1800


def test_uploads_under_images_and_datasets_are_notified_to_the_queue(
    layout: StackLayout,
) -> None:
    queues = provision(layout)
    s3, sqs = aws_client(layout, "s3"), aws_client(layout, "sqs")
    for key in ("images/cat 1.png", "datasets/digits.zip", "elsewhere/x.png"):
        s3.put_object(Bucket=layout.uploads, Key=key, Body=b"x")
    keys = []
    for _ in range(5):
        messages = sqs.receive_message(
            QueueUrl=queues["queue_url"], MaxNumberOfMessages=10, WaitTimeSeconds=0
        ).get("Messages", [])
        for message in messages:
            body = json.loads(message["Body"])
            keys += [unquote_plus(r["s3"]["object"]["key"]) for r in body.get("Records", [])]
        if len(keys) >= 2:
            break
    assert sorted(keys) == ["datasets/digits.zip", "images/cat 1.png"]


def test_provision_is_idempotent(layout: StackLayout) -> None:
    assert provision(layout) == provision(layout)
