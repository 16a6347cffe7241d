"""Outbound CloudEvents: S3 records per the CloudEvents AWS S3 adapter, and the reply events.

Reply events have types of their own (`ai.lepton.*`), so no Trigger that routes uploads to a
function ever routes that function's replies back to it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, unquote_plus

from lepton_runtime import jsonio
from lepton_runtime.errors import BadRequestError, EventFormatError
from lepton_runtime.events.inbound import S3_EVENT_TYPE_PREFIX, event_name

# The cloudevents SDK (~12 ms) is imported where an event is made or parsed, not by a start or
# an image's request; the server's warm-up imports it once serving.
if TYPE_CHECKING:
    from cloudevents.abstract import CloudEvent as AnyCloudEvent
    from cloudevents.http import CloudEvent

INFERENCE_COMPLETED = "ai.lepton.inference.completed"
INFERENCE_FAILED = "ai.lepton.inference.failed"
MODEL_PUBLISHED = "ai.lepton.model.published"
TRAINING_FAILED = "ai.lepton.training.failed"
REPLY_TYPES = frozenset({INFERENCE_COMPLETED, INFERENCE_FAILED, MODEL_PUBLISHED, TRAINING_FAILED})

JSON = "application/json"
# CloudEvents HTTP binding, header values: percent-encode space, '"', '%' and everything outside
# printable ASCII. The SDK 1.x does not, and http.client cannot send non-Latin-1 headers at all.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


def s3_object_event(
    record: Mapping[str, Any],
    region: str = "",
    extensions: Mapping[str, str] | None = None,
) -> CloudEvent:
    """One S3 notification record as a CloudEvent (CloudEvents AWS S3 adapter mapping).

    id = x-amz-request-id + "." + x-amz-id-2; source = eventSource.awsRegion.bucket;
    type = "com.amazonaws.s3." + eventName; subject = key; time = eventTime; data = the record.
    Two deliberate differences, both so Trigger filters work the same for AWS, MinIO and moto:
    the `s3:` prefix MinIO puts on event names is dropped from the type, and the subject is the
    decoded key (the record in `data` keeps the encoded one). Records without both response ids
    (MinIO, moto) get an id derived from the record, so a redelivered record keeps its id.
    `region` fills an empty awsRegion (MinIO sends "").
    """
    try:
        bucket = record["s3"]["bucket"]["name"]
        raw_key = record["s3"]["object"]["key"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not an S3 notification record: missing {exc}") from exc
    name = event_name(str(record.get("eventName", "")))
    attributes: dict[str, Any] = {
        "id": _record_id(record, bucket, raw_key, name),
        "source": f"{record.get('eventSource') or 'aws:s3'}.{record.get('awsRegion') or region}"
        f".{bucket}",
        "type": S3_EVENT_TYPE_PREFIX + name,
        "subject": unquote_plus(raw_key),
        "datacontenttype": JSON,
    }
    if record.get("eventTime"):
        attributes["time"] = record["eventTime"]
    attributes.update(extensions or {})
    from cloudevents.http import CloudEvent

    return CloudEvent(attributes, dict(record))


def reply_event(
    event_type: str,
    source: str,
    data: Any,
    subject: str | None = None,
    *,
    event_id: str | None = None,
    extensions: Mapping[str, str] | None = None,
) -> CloudEvent:
    """A JSON reply event. Pass `event_id` to make replies to a redelivered input identical."""
    if event_type.startswith(S3_EVENT_TYPE_PREFIX):
        raise ValueError(f"{event_type!r} is an inbound S3 type; a reply would trigger work again")
    attributes: dict[str, Any] = {"type": event_type, "source": source, "datacontenttype": JSON}
    if subject is not None:
        attributes["subject"] = subject
    if event_id is not None:
        attributes["id"] = event_id
    attributes.update(extensions or {})
    from cloudevents.http import CloudEvent

    return CloudEvent(attributes, data)


def binary_http(event: AnyCloudEvent) -> tuple[dict[str, str], bytes]:
    """HTTP headers and body of `event` in binary content mode (attributes as ce-* headers).

    Attribute values are percent-encoded as the HTTP binding requires (a subject
    "images/cat 1.png" travels as "images/cat%201.png"; receivers decode it).
    """
    from cloudevents.conversion import to_binary

    headers, body = to_binary(event)
    headers = {
        name: quote(value, safe=_HEADER_SAFE) if name.lower().startswith("ce-") else value
        for name, value in headers.items()
    }
    return headers, body if isinstance(body, bytes) else str(body).encode()


def event_from_http(
    headers: Mapping[str, str], body: bytes, max_values: int = jsonio.DEFAULT_MAX_VALUES
) -> CloudEvent:
    """Parse a CloudEvent from HTTP (binary, structured or batch-less), decoding the
    percent-encoded ce-* attribute values of binary mode, which the 1.x SDK leaves encoded.

    JSON is parsed by jsonio, within `max_values`, not by the SDK: it parses with the standard
    library's json, unbounded, and a structured event three times over (the envelope twice, the
    data once more; 32 MB took a worker past 2 GB). Structured: the envelope is parsed once
    (PayloadTooLargeError past the bound) and the SDK is given its attributes alone; binary:
    data that is JSON within the bound is parsed, any other is left as it came.
    """
    from cloudevents.http import CloudEvent, from_http

    lowered = {name.lower() for name in headers.keys()}  # noqa: SIM118 - werkzeug Headers
    if "ce-specversion" not in lowered:
        return _structured_event(headers, body, max_values)
    event = from_http(
        dict(headers.items()), body, data_unmarshaller=lambda data: _json_or_as_is(data, max_values)
    )
    attributes = {
        name: unquote(value) if isinstance(value, str) and "%" in value else value
        for name, value in event.get_attributes().items()
    }
    return CloudEvent(attributes, event.get_data())


def _structured_event(headers: Mapping[str, str], body: bytes, max_values: int) -> CloudEvent:
    """A structured CloudEvent: its envelope parsed once by jsonio; the SDK checks and decodes
    the attributes (required ones, specversion, data_base64) of an envelope without `data`,
    which is the JSON value the envelope holds."""
    from cloudevents.http import CloudEvent, from_http

    envelope = jsonio.loads(body, max_values, what="the CloudEvent")
    if not isinstance(envelope, dict):
        raise EventFormatError("a structured CloudEvent is a JSON object")
    data = envelope.pop("data", None)
    if not all(
        value is None or isinstance(value, str | int | float) for value in envelope.values()
    ):
        raise EventFormatError("CloudEvent attributes are strings, numbers or booleans")
    event = from_http(dict(headers.items()), jsonio.dumps(envelope))
    return event if data is None else CloudEvent(event.get_attributes(), data)


def _json_or_as_is(content: str | bytes | None, max_values: int) -> Any:
    """Binary-mode data as JSON values when it is JSON within `max_values` values, else as it
    came (the SDK's own default, with jsonio's parser): a body over the bound is refused where
    the event's data is read, after the event is authenticated."""
    if not content:
        return None
    try:
        return jsonio.loads(content, max_values, what="the event data")
    except BadRequestError:
        return content


def structured_http(event: AnyCloudEvent) -> tuple[dict[str, str], bytes]:
    """HTTP headers and body of `event` in structured content mode (one JSON document)."""
    from cloudevents.conversion import to_structured

    headers, body = to_structured(event)
    return headers, body if isinstance(body, bytes) else str(body).encode()


def _record_id(record: Mapping[str, Any], bucket: str, raw_key: str, name: str) -> str:
    response = record.get("responseElements") or {}
    request_id = response.get("x-amz-request-id")
    host_id = response.get("x-amz-id-2")
    if request_id and host_id:
        return f"{request_id}.{host_id}"
    obj = record["s3"]["object"]
    identity = "\n".join(
        str(part or "")
        for part in (
            bucket,
            raw_key,
            name,
            obj.get("eTag") or obj.get("etag"),
            obj.get("versionId"),
            obj.get("sequencer"),
            record.get("eventTime"),
        )
    )
    digest = hashlib.sha256(identity.encode()).hexdigest()[:32]
    # One request can produce several records (multi-object delete): keep the request id visible
    # but never let it alone name an event.
    return f"{request_id}.{digest}" if request_id else digest
