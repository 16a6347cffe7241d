"""The inference data plane: decode -> infer -> encode, behind parliament's `main(context)`.

`InferenceService.handle(context)` serves every route of the inference function: image bodies,
multipart forms, TF-Serving JSON, the KServe V1 and Open Inference Protocol (V2) model routes and
inbound object events, for every model published in the models bucket (`ModelCatalog`): the
default model (LEPTON_MODEL_NAME) for `POST /`, another by name in the model routes, by
`POST /?model=<name>`, or by an upload's key (`images/<name>/...` when `<name>` is published).
It never lets an exception escape: every error becomes the JSON error
body (in the route's protocol) and status from `protocol`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import numpy as np

from lepton_model.classifier import Classifier
from lepton_model.errors import ImageError
from lepton_runtime import jsonio
from lepton_runtime.errors import (
    BadRequestError,
    LeptonError,
    NotFoundError,
    ObjectChangedError,
    PayloadTooLargeError,
    StorageError,
    StorageUnavailableError,
    UnsupportedMediaTypeError,
    raise_if_transient,
)
from lepton_runtime.events.inbound import (
    InboundEvent,
    ObjectRef,
    authorize,
    looks_like_event,
    parse_cloudevent,
    parse_json,
)
from lepton_runtime.events.outbound import (
    INFERENCE_COMPLETED,
    INFERENCE_FAILED,
    MODEL_PUBLISHED,
    reply_event,
)
from lepton_runtime.http import wire
from lepton_runtime.http.responses import (
    Answer,
    Work,
    body_origin,
    cloudevent_origin,
    error_body,
    event_response,
    failure_reply,
    json_answer,
    json_response,
    respond,
    run,
    v2_error_body,
)
from lepton_runtime.inference.catalog import ModelCatalog
from lepton_runtime.inference.registry import ModelRegistry
from lepton_runtime.metrics import FunctionMetrics
from lepton_runtime.models.store import ModelStore
from lepton_runtime.settings import Settings
from lepton_runtime.storage import Storage

if TYPE_CHECKING:
    # Imported where used: a process answering only the direct routes never needs werkzeug,
    # nor PyJWT unless events are authenticated.
    from werkzeug.wrappers import Request, Response

    from lepton_runtime.events.auth import EventAuthenticator

log = logging.getLogger("lepton.infer")

_V1_PREFIX = "/v1/models"
_V2_PREFIX = "/v2"
_MODEL_ROUTE_PREFIXES = (_V1_PREFIX, _V2_PREFIX)
_INLINE_TYPES = ("application/octet-stream", "multipart/form-data")
# What clients send when they do not say (curl -d / --data-binary, plain text): sniffed.
_GENERIC_TYPES = ("", "application/x-www-form-urlencoded", "text/plain")
_MAX_RESULT_BYTES = 1024 * 1024
_RESULT_ATTEMPTS = 8  # conditional writes of a result that others keep changing, then 503
# `POST /?model=<name>`: the model an image, form or TF-Serving body is for (default otherwise).
MODEL_PARAMETER = "model"


@functools.cache
def package_version() -> str:
    """This package's version, for GET /v2 (V2 server metadata); looked up at the first ask
    (importlib.metadata and the lookup cost a start ~15 ms)."""
    from importlib import metadata

    try:
        return metadata.version("lepton-functions")
    except metadata.PackageNotFoundError:
        return "0"


@dataclass(frozen=True)
class ObjectOutcome:
    """What happened to one referenced object: a result body, or a failure, and where."""

    ref: ObjectRef
    result: dict[str, Any] | None
    result_key: str | None
    error: dict[str, Any] | None = None
    duplicate: bool = False


class InferenceService:
    """Wires settings, storage and the model catalog to the HTTP/event surface."""

    role = "infer"

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        models: ModelCatalog | None = None,
        metrics: FunctionMetrics | None = None,
        *,
        auth: EventAuthenticator | None = None,
    ) -> None:
        """`auth` verifies events; `from_env` (the function's wiring) always builds it from
        the settings, so a served function authenticates unless LEPTON_EVENT_AUTH=off."""
        self.settings = settings
        self.auth = auth
        self.storage = storage
        self.metrics = metrics or FunctionMetrics("infer")
        self.models = models or ModelCatalog(
            settings, ModelStore(storage, settings.models), self.metrics
        )
        self.limits = settings.image_limits
        # Imported in the background once the server is up (lepton_runtime.http.server.warm_up)
        self.warm_modules = ("jwt",) if auth is not None else ()
        self.event_source = settings.event_source or f"/lepton/{settings.service or 'infer'}"

    @classmethod
    def from_env(cls) -> InferenceService:
        from lepton_runtime.events.auth import EventAuthenticator

        settings = Settings.from_env()
        auth = EventAuthenticator.from_settings(settings)
        return cls(settings, Storage.from_settings(settings), auth=auth)

    @property
    def registry(self) -> ModelRegistry:
        """The default model's registry (readiness follows it)."""
        return self.models.default

    # lifecycle hooks used by lepton_runtime.http.server
    def start(self) -> None:
        self.models.start()

    def announce(self) -> None:
        """Tell sibling worker processes that a new model went live (set by the server)."""

    def changed(self) -> None:
        """A sibling worker saw a new model: check the loaded models' latest.json now (their
        loader threads do it; this may run in a signal handler)."""
        self.models.request_refresh()

    def stop(self) -> None:
        self.models.stop()

    def ready(self) -> bool:
        return self.registry.current is not None

    def wait_ready(self, timeout: float) -> bool:
        """Block until ready, at most `timeout` seconds (the server's start waits on it)."""
        return self.registry.wait_loaded(timeout)

    def readiness_detail(self) -> dict[str, Any]:
        """Why readiness says what it says: the model, its version, the last load error (and
        the other models loaded here)."""
        return self.models.status()

    def inline(self, request: Request) -> bool:
        """Answered from memory (decode -> infer -> encode), so the server may run it on its
        event loop: images, forms and the model routes of a model loaded here. Events read and
        write objects; a model's first request loads it from storage."""
        path = request.path
        if path.startswith(_MODEL_ROUTE_PREFIXES):
            return self.models.loaded(_route_model(path) or self.models.default_name)
        if request.method != "POST" or "ce-specversion" in request.headers:
            return False
        mtype = wire.media_type(request.content_type)
        if not (mtype.startswith("image/") or mtype in _INLINE_TYPES):
            return False
        name = model_parameter(request.query_string)
        return self.models.loaded(name or self.models.default_name)

    def handle(self, context: Any) -> Response:
        """parliament's `main(context)`: route, run, and always answer with JSON or an event."""
        request: Request = context.request
        return respond(
            lambda: self._route(request, getattr(context, "cloud_event", None)), self.metrics, log
        )

    def direct(
        self, method: str, path: str, query: bytes, headers: Mapping[str, str], body: bytes
    ) -> Answer | None:
        """The hot routes answered from plain values, without a Flask request: a V1 predict, a
        V2 infer and an image POSTed to `/`, for a model loaded here. The same data plane,
        errors, metrics and answers as through `handle`; what a Request and Response cost per
        request is spared. `headers` are lower-case names. None for any other request: the
        server hands it to `main(context)`."""
        work = self._direct_route(method, path, query, headers, body)
        return None if work is None else run(lambda: work, self.metrics, log)

    def _direct_route(
        self, method: str, path: str, query: bytes, headers: Mapping[str, str], body: bytes
    ) -> Work | None:
        if method != "POST" or "ce-specversion" in headers:
            return None
        if path == "/":
            mtype = wire.media_type(headers.get("content-type"))
            model = model_parameter(query)
            if not (mtype.startswith("image/") or mtype == "application/octet-stream"):
                return None
            if not self.models.loaded(model or self.models.default_name):
                return None
            return Work("image", lambda: self._answer_images([("body", body)], model))
        name = _route_model(path)
        if name is None or not self.models.loaded(name):
            return None
        if path.startswith(_V1_PREFIX):
            if _v1_verb(path) != "predict":
                return None
            return Work("tfserving", lambda: self._tfserving(self._json(body), name))
        route = _v2_route(path)
        if route is None or route[2] != ["infer"]:
            return None
        version = route[1]
        length = headers.get(wire.V2_JSON_LENGTH_HEADER.lower())
        return Work(
            "v2",
            lambda: self._v2_infer(name, version, length, body),
            error_body=v2_error_body,
        )

    # --- routes -------------------------------------------------------------------------------

    def _route(self, request: Request, cloud_event: Any) -> Work:
        """Which kind of request this is (for metrics) and the work that answers it."""
        path = request.path
        if path.startswith(_V1_PREFIX):
            return Work("tfserving", lambda: self._v1(request))
        if path == _V2_PREFIX or path.startswith("/v2/"):
            return Work("v2", lambda: self._v2(request), error_body=v2_error_body)
        if request.method != "POST":
            return Work("other", self._describe)
        if cloud_event is not None:
            self._authenticate(request)
            return Work(
                "event",
                lambda: self._event(parse_cloudevent(cloud_event)),
                self._failure(cloudevent_origin(cloud_event), cloud_event.get("subject")),
            )
        mtype = wire.media_type(request.content_type)
        model = model_parameter(request.query_string)
        if mtype == "multipart/form-data":
            return Work("multipart", lambda: self._answer_images(self._multipart(request), model))
        body = self._body(request)
        if mtype.startswith("image/") or mtype == "application/octet-stream":
            return Work("image", lambda: self._answer_images([("body", body)], model))
        if wire.is_json_type(mtype) or (
            mtype in _GENERIC_TYPES and body.lstrip()[:1] in (b"{", b"[")
        ):
            payload = self._json(body)
            if looks_like_event(payload):
                self._authenticate(request)
                return Work(
                    "event",
                    lambda: self._event(parse_json(payload)),
                    self._failure(body_origin(body)),
                )
            return Work("tfserving", lambda: self._tfserving(payload, model))
        if mtype in _GENERIC_TYPES and wire.looks_like_image(body):
            return Work("image", lambda: self._answer_images([("body", body)], model))  # curl -d
        if not body:
            raise BadRequestError("the request body is empty; send an image or JSON")
        raise UnsupportedMediaTypeError(
            f"unsupported content type {mtype or '(none)'!r}; send image/*, "
            "multipart/form-data, application/json or a CloudEvent"
        )

    def _authenticate(self, request: Request) -> None:
        """Events name objects to read: only a sender with a valid token may (401 before any
        read); images and TF-Serving requests carry their data and stay open."""
        if self.auth is not None:
            self.auth.verify(request.headers)

    def _failure(self, origin: str, subject: str | None = None) -> Any:
        return failure_reply(INFERENCE_FAILED, self.event_source, origin, subject)

    def _v1(self, request: Request) -> Response | Answer:
        """TF-Serving / KServe V1: GET /v1/models, GET /v1/models/<name>,
        POST /v1/models/<name>:predict."""
        rest = request.path[len(_V1_PREFIX) :]
        if rest in ("", "/") and request.method == "GET":
            return json_response({"models": self.models.names()})
        if not rest.startswith("/"):
            raise NotFoundError(f"no route {request.method} {request.path}")
        name, _, verb = rest[1:].partition(":")
        if request.method == "GET" and not verb:
            return self._model_status(self.models.registry(name))
        if request.method == "POST" and verb == "predict":
            return self._tfserving(self._json(self._body(request)), name)  # as `direct` does
        raise NotFoundError(f"no route {request.method} {request.path}")

    def _v2(self, request: Request) -> Response | Answer:
        """The Open Inference Protocol's model routes (health is answered by the server):
        GET /v2, GET /v2/models/<name>[/versions/<v>][/ready], POST .../infer."""
        method = request.method
        if request.path.strip("/") == "v2" and method == "GET":
            return json_response(
                {
                    "name": "lepton-infer",
                    "version": package_version(),
                    "extensions": ["binary_tensor_data"],
                }
            )
        route = _v2_route(request.path)
        if route is None:
            raise NotFoundError(f"no route {method} {request.path}")
        name, version, rest = route
        if rest == ["infer"] and method == "POST":
            length = request.headers.get(wire.V2_JSON_LENGTH_HEADER)
            return self._v2_infer(name, version, length, self._body(request))
        if rest == ["ready"] and method == "GET":
            classifier = self.models.registry(name).current
            ready = classifier is not None and version in (None, classifier.version)
            return json_response({"name": name, "ready": ready}, 200 if ready else 503)
        if not rest and method == "GET":
            classifier = self._require(name, version)
            return json_response(
                wire.v2_model_metadata(
                    classifier.name,
                    classifier.version,
                    classifier.predictor.runtime,
                    classifier.input_shape,
                    classifier.metadata.labels,
                )
            )
        raise NotFoundError(f"no route {method} {request.path}")

    def _require(self, name: str, version: str | None) -> Classifier:
        """The live version of model `name`, which must be `version` when a route names one."""
        classifier = self.models.require(name)
        if version is not None and version != classifier.version:
            raise NotFoundError(
                f"version {version!r} of {classifier.name!r} is not served here; "
                f"the live version is {classifier.version!r}"
            )
        return classifier

    def _v2_infer(
        self, name: str, version: str | None, json_length_header: str | None, body: bytes
    ) -> Answer:
        classifier = self._require(name, version)
        json_length = wire.v2_json_length(json_length_header, len(body))
        # The binary part is read through a view: the tensor data is not copied out of the body.
        header, binary = (
            (body, b"")
            if json_length is None
            else (body[:json_length], memoryview(body)[json_length:])
        )
        parsed = wire.parse_v2_infer(
            self._json(header), binary, classifier.input_shape, self.settings.max_batch_images
        )
        probabilities = classifier.probabilities(self._batch(classifier, parsed.inputs))
        answer, headers = wire.v2_infer_answer(
            classifier.name, classifier.version, parsed, probabilities
        )
        return Answer(200, answer, tuple(headers.items()))

    def _describe(self) -> Response:
        """GET /: what this function is and serves; `status` answers KServe V1's liveness."""
        classifier = self.registry.current
        return json_response(
            {
                "status": "alive",
                "function": "infer",
                "model": wire.model_info(classifier.name, classifier.version)
                if classifier
                else None,
                "usage": "POST an image, a multipart form, TF-Serving JSON or an S3 event to /",
            }
        )

    def _model_status(self, registry: ModelRegistry) -> Response:
        classifier = registry.current
        ready = classifier is not None
        version = classifier.version if classifier else ""
        return json_response(
            {
                "name": registry.name,
                "ready": ready,
                "model_version_status": [
                    {
                        "version": version,
                        "state": "AVAILABLE" if ready else "LOADING",
                        "status": {
                            "error_code": "OK" if ready else "UNAVAILABLE",
                            "error_message": "" if ready else registry.last_error,
                        },
                    }
                ],
                "labels": list(classifier.metadata.labels) if classifier else [],
                "input_shape": list(classifier.input_shape) if classifier else [],
            },
            200 if ready else 503,
        )

    # --- request bodies -----------------------------------------------------------------------

    @staticmethod
    def _body(request: Request) -> bytes:
        return request.get_data(cache=True)  # the server bounded it already

    def _multipart(self, request: Request) -> list[tuple[str, bytes]]:
        from werkzeug.exceptions import RequestEntityTooLarge

        limit = self.settings.max_form_parts
        boundary = request.mimetype_params.get("boundary", "").encode("latin-1")
        # Every part starts with its boundary line: counted in the raw body (C speed), the
        # refusal names the limit before werkzeug parses any part.
        parts = request.get_data(cache=True).count(b"--" + boundary) - 1 if boundary else 0
        if parts > limit:
            raise PayloadTooLargeError(f"the form has {parts} parts; the limit is {limit}")
        try:
            files = [
                (storage.filename or field, storage.read())
                for field, storage in request.files.items(multi=True)
            ]
        except RequestEntityTooLarge as exc:
            raise PayloadTooLargeError(
                f"a form field that is not a file is over {self.settings.max_form_memory_bytes}"
                f" bytes, or the form over {limit} parts"
            ) from exc
        if not files:
            raise BadRequestError("the multipart form holds no files")
        return files

    def _json(self, body: bytes) -> Any:
        return jsonio.loads(body, self.settings.max_json_values)

    # --- inference ----------------------------------------------------------------------------

    def _classify(self, classifier: Classifier, images: list[tuple[str, bytes]]) -> list:
        return classifier.classify(self._decode_all(classifier, images))

    def _decode_all(self, classifier: Classifier, images: list[tuple[str, bytes]]) -> np.ndarray:
        """Decode named images into one batch; an error names the image when there are several."""
        wire.check_batch(len(images), self.settings.max_batch_images)
        arrays = []
        for name, data in images:
            try:
                arrays.append(classifier.decode(data, self.limits))
            except ImageError as exc:
                if len(images) > 1:
                    raise type(exc)(f"{name}: {exc}") from exc
                raise
        self.metrics.batch(len(arrays))
        return arrays[0][np.newaxis] if len(arrays) == 1 else np.stack(arrays)

    def _answer_images(self, images: list[tuple[str, bytes]], model: str | None) -> Answer:
        classifier = self.models.require(model)
        predictions = self._classify(classifier, images)
        return json_answer(wire.image_answer(classifier.name, classifier.version, predictions))

    def _batch(
        self, classifier: Classifier, inputs: wire.ImagesInput | wire.TensorInput
    ) -> np.ndarray:
        """The model's input batch: a tensor as sent, or the images decoded."""
        if isinstance(inputs, wire.TensorInput):
            self.metrics.batch(len(inputs.array))
            return inputs.array
        return self._decode_all(classifier, list(inputs.images))

    def _tfserving(self, payload: Any, model: str | None) -> Answer:
        classifier = self.models.require(model)
        parsed = wire.parse_tfserving(
            payload, classifier.input_shape, self.settings.max_batch_images
        )
        probabilities = classifier.probabilities(self._batch(classifier, parsed))
        return json_answer(wire.tfserving_answer(probabilities))

    # --- events -------------------------------------------------------------------------------

    def _event(self, event: InboundEvent) -> Response | Answer:
        if event.event_type == MODEL_PUBLISHED:
            return self._model_published(event)
        if not event.refs:
            self.metrics.object_event("ignored", max(1, len(event.ignored)))
            return _ACCEPTED  # acknowledged; no reply event
        for ref in event.refs:  # a crafted event is refused whole, before any read
            authorize(ref, self.settings, self.role)
        classifiers = [self.models.require(self.model_for(ref.key)) for ref in event.refs]
        outcomes = [self._process(c, ref) for c, ref in zip(classifiers, event.refs, strict=True)]
        return self._reply(event, classifiers[0], outcomes)

    def model_for(self, key: str) -> str | None:
        """The model an upload is for: `<name>` for `images/<name>/...` when a model of that
        name is published, else the default (None)."""
        prefix = self.settings.images.prefix
        head, sep, _ = key[len(prefix) :].partition("/") if key.startswith(prefix) else ("", "", "")
        return head if sep and head and self.models.published(head) else None

    def _model_published(self, event: InboundEvent) -> Answer:
        data = event.data if isinstance(event.data, dict) else {}
        name = data.get("name")
        if isinstance(name, str) and data.get("promoted", True):
            # Coalesced with a load already running (it is loaded once more after it), never
            # dropped; the event is acknowledged at once, the load runs in the background.
            # Only a model loaded here has anything to refresh; another loads on first use.
            self.models.request_refresh(name)
            self.announce()
        return _ACCEPTED

    def _process(self, classifier: Classifier, ref: ObjectRef) -> ObjectOutcome:
        """Classify one object and write its result, once: a redelivery gets the first result.

        The result is written with a conditional PUT (If-None-Match: *), so the usual case
        costs one read and one write; only when a result is already there is it read, and it
        is kept when it describes the same object (same ETag). A result of another object is
        replaced only while the object classified is still the one at its key: when two
        uploads of one key are classified at once, the newer one's result stays.
        """
        result_key = self.settings.results.key(f"{ref.key}.json")
        try:
            # The object the event names, not whatever holds its key now: an overwritten
            # object is answered as stale (its own event classifies the new bytes).
            obj = self.storage.get_bytes(
                ref.bucket,
                ref.key,
                self.settings.max_image_bytes,
                # The ETag when the event has one (it names the content whether or not the
                # bucket keeps versions); else the version id.
                if_match=ref.etag,
                version_id=None if ref.etag else ref.version_id,
            )
        except StorageError as exc:
            raise_if_transient(exc)
            self.metrics.object_event("failed")
            return ObjectOutcome(ref, None, None, error_body(exc)["error"])
        source = {
            "bucket": ref.bucket,
            "key": ref.key,
            "etag": obj.etag,
            "size": obj.size,
            "version_id": obj.version_id or ref.version_id,
            "event_time": ref.event_time,
        }
        model = wire.model_info(classifier.name, classifier.version)
        try:
            predictions = self._classify(classifier, [(ref.key, obj.data)])
            body = {
                "model": model,
                "predictions": [p.to_dict() for p in predictions],
                "source": source,
            }
        except (ImageError, LeptonError) as exc:
            body = {"model": model, "error": error_body(exc)["error"], "source": source}
        return self._write_result(ref, obj.etag, result_key, body)

    def _write_result(
        self, ref: ObjectRef, etag: str | None, result_key: str, body: dict[str, Any]
    ) -> ObjectOutcome:
        """Write the result `body` of the object with ETag `etag`, unless a result of that same
        object is there (a redelivery: the first is returned) or the object was overwritten
        since and the newer one's result is there (ours is stale, object_changed)."""
        bucket = self.settings.results.bucket
        written = self.storage.put_json(bucket, result_key, body, if_absent=True)
        for _ in range(_RESULT_ATTEMPTS):
            if written is not None:
                break
            found = self.storage.read_json(bucket, result_key, _MAX_RESULT_BYTES)
            if found is None:  # deleted since our write was refused: create it again
                written = self.storage.put_json(bucket, result_key, body, if_absent=True)
                continue
            existing, existing_etag = found
            if _same_source(existing, etag):
                self.metrics.object_event("duplicate")
                return ObjectOutcome(
                    ref, existing, result_key, existing.get("error"), duplicate=True
                )
            # Another object's result. It is replaced only while the object read is still the
            # one at the key (else it is the newer upload's, and ours is stale), and only as
            # it was read (If-Match), so a result written meanwhile is looked at again.
            try:
                self._check_current(ref, etag)
            except StorageError as exc:
                raise_if_transient(exc)
                self.metrics.object_event("failed")
                return ObjectOutcome(ref, None, None, error_body(exc)["error"])
            written = self.storage.put_json(bucket, result_key, body, if_match=existing_etag)
        if written is None:
            raise StorageUnavailableError(f"s3://{bucket}/{result_key} kept changing")
        outcome = "failed" if "error" in body else "completed"
        self.metrics.object_event(outcome)
        return ObjectOutcome(ref, body, result_key, body.get("error"))

    def _check_current(self, ref: ObjectRef, etag: str | None) -> None:
        """ObjectChangedError unless the object at `ref`'s key still has ETag `etag`
        (ObjectNotFoundError when it is gone)."""
        current = self.storage.head(ref.bucket, ref.key).etag
        if etag and current != etag:
            raise ObjectChangedError(
                f"s3://{ref.bucket}/{ref.key} was overwritten while it was classified; "
                "the newer object's result is kept"
            )

    def _reply(
        self, event: InboundEvent, classifier: Classifier, outcomes: list[ObjectOutcome]
    ) -> Response:
        bucket = self.settings.results.bucket
        entries = []
        for outcome in outcomes:
            entry = dict(
                outcome.result or {"source": {"bucket": outcome.ref.bucket, "key": outcome.ref.key}}
            )
            if outcome.error and "error" not in entry:
                entry["error"] = outcome.error
            if outcome.result_key:
                entry["result"] = {"bucket": bucket, "key": outcome.result_key}
            entry["duplicate"] = outcome.duplicate
            entries.append(entry)
        failed = [e for e in entries if "error" in e]
        data: dict[str, Any] = (
            dict(entries[0])
            if len(entries) == 1
            else {
                "model": wire.model_info(classifier.name, classifier.version),
                "predictions": [p for e in entries for p in e.get("predictions", [])],
            }
        )
        data["results"] = entries
        event_type = INFERENCE_FAILED if len(failed) == len(entries) else INFERENCE_COMPLETED
        subject = outcomes[0].ref.key if len(outcomes) == 1 else None
        # The same input gets the same reply id, so a redelivery's reply deduplicates downstream.
        reply_id = hashlib.sha256(
            "\n".join([event_type, *(o.ref.dedup_id for o in outcomes)]).encode()
        ).hexdigest()[:32]
        reply = reply_event(event_type, self.event_source, data, subject, event_id=reply_id)
        return event_response(reply)


_ACCEPTED = Answer(202, b"", (("Content-Type", "text/plain; charset=utf-8"),))


def _same_source(existing: Any, etag: str | None) -> bool:
    if not isinstance(existing, dict) or not etag:
        return False
    source = existing.get("source")
    return isinstance(source, dict) and source.get("etag") == etag


def model_parameter(query: bytes) -> str | None:
    """The model `POST /?model=<name>` names in a raw query string; None for the default."""
    if not query:
        return None
    values = parse_qs(query.decode("latin-1"), encoding="utf-8").get(MODEL_PARAMETER)
    return (values[0] or None) if values else None


def _v1_verb(path: str) -> str:
    """`predict` of `/v1/models/<name>:predict`."""
    return path[len(_V1_PREFIX) + 1 :].partition(":")[2]


def _v2_route(path: str) -> tuple[str, str | None, list[str]] | None:
    """A V2 model route's model name, version (or None) and the rest of its path
    (`/v2/models/<name>[/versions/<v>]/<rest>`); None when the path is not one."""
    parts = path.strip("/").split("/")[1:]
    if len(parts) < 2 or parts[0] != "models":
        return None
    name, rest = parts[1], parts[2:]
    version = None
    if rest[:1] == ["versions"] and len(rest) >= 2:
        version, rest = rest[1], rest[2:]
    return name, version, rest


def _route_model(path: str) -> str | None:
    """The model a /v1 or /v2 model route names (`/v1/models/<name>[:verb]`,
    `/v2/models/<name>/...`); None for the routes that name none."""
    parts = path.split("/", 4)  # "", "v1"|"v2", "models", "<name>[:verb]", ...
    if len(parts) < 4 or parts[2] != "models" or not parts[3]:
        return None
    return parts[3].partition(":")[0] if parts[1] == "v1" else parts[3]
