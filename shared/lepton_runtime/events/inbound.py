"""Inbound events -> small immutable object references.

Every way an upload can reach a function ends up as an `InboundEvent` holding `ObjectRef`s:

- CloudEvents (binary or structured, parsed by the cloudevents SDK): the CloudEvents AWS S3
  adapter (`type com.amazonaws.s3.<eventName>`, data = one S3 record or `{"Records": [...]}`),
  the Knative IntegrationSource `aws-sqs` (data = the SQS message body), and any other CloudEvent
  (kept whole in `data`, e.g. `ai.lepton.model.published`).
- Plain JSON: an S3 notification `{"Records": [...]}`; SQS messages and Lambda-style SQS batches
  with a string body; SNS notifications (HTTP delivery and Lambda-style records), also inside
  SQS; MinIO webhook bodies; EventBridge "Object Created".

`s3:TestEvent`, SNS subscription messages and non-create events are recognised and listed in
`ignored`, never errors. A shape we do not know raises `EventFormatError`.

Keys in S3 and MinIO notification records are URL-encoded (form encoding: space -> `+`,
`+` -> `%2B`; moto and MinIO also encode `/` as `%2F`) and are decoded with `unquote_plus`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus, unquote_plus

from lepton_runtime import jsonio
from lepton_runtime.errors import (
    BadRequestError,
    EventFormatError,
    ForbiddenLocationError,
    PayloadTooLargeError,
)
from lepton_runtime.settings import FunctionRole, Settings
from lepton_runtime.storage import normalise_etag

if TYPE_CHECKING:  # the SDK is imported where an event is parsed: not by an image's request
    from cloudevents.abstract import CloudEvent

S3_EVENT_TYPE_PREFIX = "com.amazonaws.s3."
# Knative's IntegrationSource (Apache Camel Kamelets underneath) has named its SQS events
# differently across releases; all carry the raw SQS message body as data.
KNATIVE_SQS_EVENT_TYPES = frozenset(
    {
        "dev.knative.eventing.aws-sqs",
        "dev.knative.connector.event.aws-sqs",
        "dev.knative.eventing.aws.sqs",
    }
)
TEST_EVENT = "s3:TestEvent"
OBJECT_CREATED = "ObjectCreated"

_SNS_TYPES = ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation")
_MAX_NESTING = 4  # e.g. Knative aws-sqs -> SQS body -> SNS envelope -> S3 notification
# S3 sends one record per notification and SQS at most 10 messages per batch: an event naming
# more objects than this is not one a store sent, and each object costs a read and a write.
MAX_RECORDS = 100
# EventBridge names the operation in `detail.reason`; S3 notifications in the eventName suffix.
_EVENTBRIDGE_REASONS = {
    "PutObject": "Put",
    "POST Object": "Post",
    "PostObject": "Post",
    "CopyObject": "Copy",
    "CompleteMultipartUpload": "CompleteMultipartUpload",
}


@dataclass(frozen=True)
class ObjectRef:
    """One object an event points at, with its key decoded.

    `dedup_id` is the same for every delivery of the same upload, whatever path the event took
    (SQS redelivery, MinIO retry, an S3 and an EventBridge notification of one PUT): a digest of
    bucket, key and the object's identity, which is its ETag when known (the design's
    "same bucket/key/etag"; re-uploading identical bytes is the same work), else its version id,
    else the notification's sequencer. Left empty, it is computed.
    """

    bucket: str
    key: str
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    event_name: str = "ObjectCreated:Put"
    event_time: str | None = None
    dedup_id: str = ""
    sequencer: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.dedup_id:
            identity = self.etag or self.version_id or self.sequencer or ""
            digest = hashlib.sha256(f"{self.bucket}\n{self.key}\n{identity}".encode()).hexdigest()
            object.__setattr__(self, "dedup_id", digest[:32])

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def created(self) -> bool:
        return self.event_name.startswith(OBJECT_CREATED)


@dataclass(frozen=True)
class InboundEvent:
    """What a function was asked to do: object-created refs plus everything skipped, and why.

    `event_type`, `event_id`, `event_source`, `subject` and `data` are set for CloudEvents only.
    """

    kind: str
    refs: tuple[ObjectRef, ...] = ()
    ignored: tuple[str, ...] = ()
    event_type: str | None = None
    event_id: str | None = None
    event_source: str | None = None
    subject: str | None = None
    data: Any = field(default=None, compare=False)


@dataclass(frozen=True)
class Notification:
    """The S3 notification records found in a body, unwrapped from SQS/SNS/MinIO/EventBridge.

    Records keep the S3 notification shape (keys still URL-encoded) and every event name; the
    event-source adapter forwards them as they are. EventBridge events become records of that
    shape (their key encoded like S3 does) so both paths look alike downstream.
    """

    kind: str
    records: tuple[Mapping[str, Any], ...] = ()
    ignored: tuple[str, ...] = ()


def parse_json(body: Any) -> InboundEvent:
    """Parse a plain JSON body (already decoded) of any supported shape."""
    if isinstance(body, Mapping) and "specversion" in body:
        # A structured CloudEvent that arrived without the application/cloudevents+json type.
        from cloudevents.exceptions import GenericException as CloudEventError
        from cloudevents.http import from_dict

        try:
            event = from_dict(dict(body))
        # The SDK raises its own errors, and TypeError/ValueError/AttributeError for attribute
        # values of the wrong JSON type (`"specversion": []`).
        except (CloudEventError, TypeError, ValueError, AttributeError, KeyError) as exc:
            raise EventFormatError(f"invalid structured CloudEvent: {exc}") from exc
        return parse_cloudevent(event)
    return _inbound(find_records(body))


def parse_cloudevent(event: CloudEvent) -> InboundEvent:
    """Parse a CloudEvent as the cloudevents SDK gives it (`from_http`, binary or structured)."""
    event_type = str(event["type"])
    data = _decoded_data(event.get_data())
    attributes = {
        "event_type": event_type,
        "event_id": str(event["id"]),
        "event_source": str(event["source"]),
        "subject": event.get("subject"),
        "data": data,
    }
    if event_type.startswith(S3_EVENT_TYPE_PREFIX):
        found = _s3_adapter_records(event_type, data)
    elif event_type in KNATIVE_SQS_EVENT_TYPES:
        found = find_records(data, kind="knative-aws-sqs")
    elif _shape(data) is not None:
        found = find_records(data, kind="cloudevent")
    else:
        found = Notification(kind="cloudevent")
    return _inbound(found, **attributes)


def find_records(body: Any, kind: str | None = None) -> Notification:
    """Every S3 notification record in a plain JSON body; `kind` overrides the detected one."""
    records: list[Mapping[str, Any]] = []
    ignored: list[str] = []
    detected = _walk(body, records, ignored, depth=0)
    return Notification(kind=kind or detected, records=tuple(records), ignored=tuple(ignored))


def looks_like_event(body: Any) -> bool:
    """True for a JSON body in one of the event shapes (so not e.g. TF-Serving `instances`)."""
    return isinstance(body, Mapping) and ("specversion" in body or _shape(body) is not None)


def object_ref(record: Mapping[str, Any]) -> ObjectRef:
    """The decoded reference of one S3 notification record."""
    try:
        s3 = record["s3"]
        bucket = s3["bucket"]["name"]
        obj = s3["object"]
        raw_key = obj["key"]
    except (KeyError, TypeError) as exc:
        raise EventFormatError(f"S3 record without s3.bucket.name / s3.object.key ({exc})") from exc
    if not isinstance(bucket, str) or not bucket or not isinstance(raw_key, str) or not raw_key:
        raise EventFormatError("S3 record with an empty bucket name or object key")
    return ObjectRef(
        bucket=bucket,
        key=unquote_plus(raw_key),
        size=_int_or_none(obj.get("size")),
        etag=normalise_etag(obj.get("eTag") or obj.get("etag")),
        version_id=obj.get("versionId") or None,
        event_name=event_name(record.get("eventName", "")),
        event_time=record.get("eventTime") or None,
        sequencer=obj.get("sequencer") or None,
    )


def event_name(name: Any) -> str:
    """`s3:ObjectCreated:Put` (MinIO, bucket configuration) -> `ObjectCreated:Put` (S3 records);
    anything that is not a string names no event ("")."""
    return name.removeprefix("s3:") if isinstance(name, str) else ""


def authorize(ref: ObjectRef, settings: Settings, role: FunctionRole) -> ObjectRef:
    """Return `ref` if `role` may read it; else raise ForbiddenLocationError.

    A crafted event must not make a function read an arbitrary bucket, and nothing inside the
    results or models locations may ever start work (recursion guard, checked per event).
    """
    for name, output in (("results", settings.results), ("models", settings.models)):
        if output.contains(ref.bucket, ref.key):
            raise ForbiddenLocationError(
                f"{ref.uri} is inside the {name} location {output}; outputs never start work"
            )
    served = settings.served(role)
    if not any(location.contains(ref.bucket, ref.key) for location in served):
        where = ", ".join(str(location) for location in served)
        raise ForbiddenLocationError(f"{ref.uri} is outside what this function serves ({where})")
    return ref


def _inbound(found: Notification, **attributes: Any) -> InboundEvent:
    refs: list[ObjectRef] = []
    ignored = list(found.ignored)
    for record in found.records:
        ref = object_ref(record)
        if ref.created:
            refs.append(ref)
        else:
            ignored.append(f"{ref.event_name} {ref.uri}: not an object-created event")
    return InboundEvent(kind=found.kind, refs=tuple(refs), ignored=tuple(ignored), **attributes)


def _s3_adapter_records(event_type: str, data: Any) -> Notification:
    """Data of a `com.amazonaws.s3.*` CloudEvent: one S3 record or a whole notification."""
    if isinstance(data, Mapping) and "s3" in data:
        record = dict(data)
        # The type carries the event name; a record trimmed by some producer may not.
        record.setdefault("eventName", event_type.removeprefix(S3_EVENT_TYPE_PREFIX))
        return Notification(kind="cloudevent-s3", records=(record,))
    if _shape(data) is None:
        raise EventFormatError(
            f"{event_type} CloudEvent whose data is neither an S3 record nor an S3 notification"
        )
    return find_records(data, kind="cloudevent-s3")


def _shape(body: Any) -> str | None:
    """Which wrapper `body` is, or None for a shape we do not know."""
    if not isinstance(body, Mapping):
        return None
    if body.get("Event") == TEST_EVENT:
        return "test"
    if "EventName" in body and ("Records" in body or "Key" in body):
        return "minio"
    if isinstance(body.get("Records"), list):
        return "records"
    if "detail-type" in body and isinstance(body.get("detail"), Mapping):
        return "eventbridge"
    if body.get("Type") in _SNS_TYPES and ("Message" in body or "TopicArn" in body):
        return "sns"
    if isinstance(body.get("Body"), str) or (
        isinstance(body.get("body"), str) and body.get("eventSource") == "aws:sqs"
    ):
        return "sqs"
    return None


def _walk(body: Any, records: list[Mapping[str, Any]], ignored: list[str], depth: int) -> str:
    """Collect records and ignore-reasons from `body`; return the outermost kind found."""
    if depth > _MAX_NESTING:
        raise EventFormatError("event wrappers nested too deeply")
    shape = _shape(body)
    if shape is None:
        raise EventFormatError(_unknown_shape(body))
    assert isinstance(body, Mapping)
    if shape == "test":
        ignored.append(f"{TEST_EVENT} for bucket {body.get('Bucket', '?')}")
        return "s3"
    if shape == "eventbridge":
        _eventbridge(body, records, ignored)
        return "eventbridge"
    if shape == "sns":
        _sns(body, records, ignored, depth)
        return "sns"
    if shape == "sqs":
        text = body["Body"] if isinstance(body.get("Body"), str) else body["body"]
        _walk(_json_text(text, "SQS message body"), records, ignored, depth + 1)
        return "sqs"
    if shape == "minio" and not body.get("Records"):
        records.append(_minio_key_record(body))
        return "minio"
    return _records(body, records, ignored, depth, minio=shape == "minio")


def _records(
    body: Mapping[str, Any],
    records: list[Mapping[str, Any]],
    ignored: list[str],
    depth: int,
    minio: bool,
) -> str:
    entries = body.get("Records")
    if not isinstance(entries, list):
        raise EventFormatError("`Records` must be a list")
    if len(records) + len(entries) > MAX_RECORDS:
        raise PayloadTooLargeError(
            f"the event holds more than {MAX_RECORDS} records, the limit for one event"
        )
    if not entries:
        ignored.append("notification without records")
    kinds: list[str] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise EventFormatError(f"Records[{index}] is not an object")
        if "s3" in entry:
            records.append(entry)
            source = str(entry.get("eventSource", ""))
            kinds.append("minio" if minio or source.startswith("minio") else "s3")
        elif entry.get("eventSource") == "aws:sqs" and isinstance(entry.get("body"), str):
            _walk(_json_text(entry["body"], f"Records[{index}].body"), records, ignored, depth + 1)
            kinds.append("sqs")
        elif entry.get("EventSource") == "aws:sns" and isinstance(entry.get("Sns"), Mapping):
            _sns(entry["Sns"], records, ignored, depth)
            kinds.append("sns")
        else:
            raise EventFormatError(f"Records[{index}] is neither an S3, SQS nor SNS record")
    return kinds[0] if kinds else ("minio" if minio else "s3")


def _sns(
    envelope: Mapping[str, Any], records: list[Mapping[str, Any]], ignored: list[str], depth: int
) -> None:
    kind = envelope.get("Type")
    if kind != "Notification":
        # Subscriptions are confirmed by whoever owns the endpoint, never by an event handler.
        ignored.append(f"SNS {kind} for {envelope.get('TopicArn', '?')}")
        return
    message = envelope.get("Message")
    if not isinstance(message, str):
        raise EventFormatError("SNS notification without a string Message")
    _walk(_json_text(message, "SNS Message"), records, ignored, depth + 1)


def _eventbridge(
    body: Mapping[str, Any], records: list[Mapping[str, Any]], ignored: list[str]
) -> None:
    detail_type = body["detail-type"]
    detail = body["detail"]
    try:
        bucket = detail["bucket"]["name"]
        obj = detail["object"]
        key = obj["key"]
    except (KeyError, TypeError) as exc:
        if detail_type in ("Object Created", "Object Deleted"):
            raise EventFormatError(f"EventBridge {detail_type} without {exc}") from exc
        ignored.append(f"EventBridge {detail_type!r} from {body.get('source', '?')}")
        return
    if detail_type == "Object Created":
        name = f"{OBJECT_CREATED}:{_EVENTBRIDGE_REASONS.get(detail.get('reason', ''), 'Put')}"
    elif detail_type == "Object Deleted":
        name = "ObjectRemoved:" + (
            "DeleteMarkerCreated"
            if detail.get("deletion-type") == "Delete Marker Created"
            else "Delete"
        )
    else:
        ignored.append(f"EventBridge {detail_type!r} for s3://{bucket}/{key}")
        return
    # EventBridge keys are NOT URL-encoded (AWS's own examples carry raw `:` that S3
    # notifications would send as `%3A`, and keys with `+` or `%` arrive verbatim), so the key is
    # taken as is and encoded here the way S3 encodes record keys; `object_ref` decodes it back.
    records.append(
        {
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": body.get("region", ""),
            "eventTime": body.get("time", ""),
            "eventName": name,
            "responseElements": {
                "x-amz-request-id": detail.get("request-id", ""),
                "x-amz-id-2": body.get("id", ""),
            },
            "s3": {
                "s3SchemaVersion": "1.0",
                "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                "object": {
                    key_name: value
                    for key_name, value in (
                        ("key", quote_plus(key, safe="/")),
                        ("size", obj.get("size")),
                        ("eTag", obj.get("etag")),
                        ("versionId", obj.get("version-id")),
                        ("sequencer", obj.get("sequencer")),
                    )
                    if value is not None
                },
            },
        }
    )


def _minio_key_record(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """A MinIO body without Records: `Key` is "bucket/key", not URL-encoded."""
    bucket, _, key = str(body.get("Key", "")).partition("/")
    if not bucket or not key:
        raise EventFormatError("MinIO event whose Key is not 'bucket/key'")
    return {
        "eventSource": "minio:s3",
        "eventName": body.get("EventName", ""),
        "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(key, safe="/")}},
    }


def _decoded_data(data: Any) -> Any:
    """CloudEvent data as JSON values: the SDK leaves non-JSON content types as text/bytes."""
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            data = bytes(data).decode()
        except UnicodeDecodeError:
            return data
    if isinstance(data, str) and data.strip():
        try:
            return jsonio.loads(data, what="the event data")
        except PayloadTooLargeError:
            raise
        except BadRequestError:
            return data
    return data


def _json_text(text: str, what: str) -> Any:
    try:
        return jsonio.loads(text, what=what)
    except PayloadTooLargeError:
        raise
    except BadRequestError as exc:
        raise EventFormatError(str(exc)) from exc


def _unknown_shape(body: Any) -> str:
    if isinstance(body, Mapping):
        keys = ", ".join(sorted(map(str, body))[:8]) or "none"
        return (
            "not an event this function understands (expected an S3/MinIO notification, its "
            f"SQS/SNS envelope, EventBridge 'Object Created' or a CloudEvent); top-level keys: "
            f"{keys}"
        )
    return f"expected a JSON object, got {type(body).__name__}"


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None
