"""The training function: datasets in, versioned models out.

A dataset archive (`datasets/<name>.zip|.tar.gz`) or a folder's `datasets/<name>/manifest.json`
starts a training; so does an HTTP POST naming a dataset (or carrying the seed article's
x_train/y_train arrays). The model is trained and evaluated with lepton_model, exported, stored
under `<model>/<version>/`, and made live by writing `<model>/latest.json` last, unless the
promotion gate holds it back. The same data with the same options never trains twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cloudevents.http import CloudEvent
from flask import Request, Response

from lepton_model import datasets as ds
from lepton_model.artifacts import KERAS_FILE, METADATA_FILE, export_artifact
from lepton_model.errors import DatasetError, LeptonModelError
from lepton_runtime import codecs, jsonio
from lepton_runtime.auth import EventAuthenticator
from lepton_runtime.emit import MODEL_PUBLISHED, TRAINING_FAILED, reply_event
from lepton_runtime.errors import (
    BadRequestError,
    ObjectTooLargeError,
    StorageError,
    TrainingBusyError,
    is_retryable,
)
from lepton_runtime.events import (
    InboundEvent,
    ObjectRef,
    authorize,
    looks_like_event,
    parse_cloudevent,
    parse_json,
)
from lepton_runtime.metrics import FunctionMetrics
from lepton_runtime.models.store import Claim, LeaseLostError, ModelStore
from lepton_runtime.protocol import (
    Work,
    body_origin,
    cloudevent_origin,
    error_body,
    event_response,
    failure_reply,
    json_response,
    respond,
)
from lepton_runtime.settings import Settings
from lepton_runtime.storage import Storage
from lepton_runtime.training.requests import (
    MANIFEST_NAME,
    DatasetSource,
    TrainingRequest,
    dataset_source_for_key,
    parse_http_request,
    parse_options,
)

log = logging.getLogger("lepton.train")

_MAX_MANIFEST_BYTES = 1024 * 1024


def dataset_limits(settings: Settings) -> ds.DatasetLimits:
    """The one DatasetLimits every way of reading a dataset uses (archives, folders, the CLI)."""
    return ds.DatasetLimits(
        max_entries=settings.max_dataset_entries,
        max_member_bytes=settings.max_image_bytes,  # every member may be an image, none more
        max_total_bytes=settings.max_dataset_unpacked_bytes,
        max_archive_bytes=settings.max_dataset_bytes,
        max_decoded_bytes=settings.max_dataset_decoded_bytes,
    )


class TrainingService:
    """Wires settings and storage to lepton_model's training; one training at a time."""

    role = "train"
    max_workers = 1  # one training at a time per instance (containerConcurrency 1)

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        metrics: FunctionMetrics | None = None,
        *,
        auth: EventAuthenticator | None = None,
    ) -> None:
        """`auth` verifies requests; `from_env` (the function's wiring) always builds it from
        the settings. A training Job (`lepton train-job`) takes no requests and has none."""
        self.settings = settings
        self.storage = storage
        self.auth = auth
        self.store = ModelStore(storage, settings.models)
        # Who holds a run's lease: unique per process, readable in the run record.
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.metrics = metrics or FunctionMetrics("train")
        self.event_source = settings.event_source or f"/lepton/{settings.service or 'train'}"
        self.limits = settings.image_limits
        self.dataset_limits = dataset_limits(settings)
        self._busy = threading.Lock()
        self.defaults = {"epochs": settings.train_epochs}

    @classmethod
    def from_env(cls) -> TrainingService:
        settings = Settings.from_env()
        auth = EventAuthenticator.from_settings(settings)
        return cls(settings, Storage.from_settings(settings), auth=auth)

    def start(self) -> None:
        log.info("training devices", extra={"devices": _devices()})

    def stop(self) -> None:
        pass

    def ready(self) -> bool:
        return True

    # --- surface ------------------------------------------------------------------------------

    def handle(self, context: Any) -> Response:
        """parliament's `main(context)` for the training function."""
        request: Request = context.request
        return respond(
            lambda: self._route(request, getattr(context, "cloud_event", None)), self.metrics, log
        )

    def _route(self, request: Request, cloud_event: Any) -> Work:
        if request.method != "POST":
            return Work("other", self._describe)
        # Every POST reads a dataset or publishes a model (arrays too): only a sender with a
        # valid token may ask (401 before anything is read).
        if self.auth is not None:
            self.auth.verify(request.headers)
        if cloud_event is not None:
            return Work(
                "event",
                lambda: self.handle_event(parse_cloudevent(cloud_event)),
                failure_reply(
                    TRAINING_FAILED,
                    self.event_source,
                    cloudevent_origin(cloud_event),
                    cloud_event.get("subject"),
                ),
            )
        payload = self._json(request)
        if looks_like_event(payload):
            origin = body_origin(request.get_data(cache=True))
            return Work(
                "event",
                lambda: self.handle_event(parse_json(payload)),
                failure_reply(TRAINING_FAILED, self.event_source, origin),
            )
        return Work("http", lambda: self._train_http(payload))

    def _describe(self) -> Response:
        return json_response(
            {
                "function": "train",
                "busy": self._busy.locked(),
                "usage": "POST an S3 dataset event or training JSON",
            }
        )

    def _train_http(self, payload: Any) -> Response:
        job = parse_http_request(
            payload, self.settings.datasets, self.settings.model_name, self.defaults
        )
        outcome = self.run(job)
        return json_response(outcome.data, 200 if outcome.ok else 422)

    def handle_event(self, event: InboundEvent) -> Response:
        """Train for each dataset an event names; answer with one reply event."""
        outcomes = self.run_event(event)
        if not outcomes:
            return Response(status=202)  # acknowledged: nothing to train
        return event_response(self.reply(outcomes[-1]))

    def run_event(self, event: InboundEvent) -> list[TrainingOutcome]:
        """Every training an event asks for (none for images of a folder dataset)."""
        jobs: list[TrainingRequest] = []
        for ref in event.refs:
            authorize(ref, self.settings, self.role)
            job = self._request_for(ref)
            if job is not None:
                jobs.append(job)
        if not jobs:
            self.metrics.object_event("ignored", max(1, len(event.refs) + len(event.ignored)))
        return [self.run(job) for job in jobs]

    def reply(self, outcome: TrainingOutcome) -> CloudEvent:
        return reply_event(
            outcome.event_type, self.event_source, outcome.data, outcome.data.get("name")
        )

    def _request_for(self, ref: ObjectRef) -> TrainingRequest | None:
        source = dataset_source_for_key(self.settings.datasets, ref.bucket, ref.key)
        if source is None:
            return None  # one image of a folder dataset: its manifest starts the training
        options: dict[str, Any] = {}
        if source.kind == "folder":
            manifest = self.storage.get_json(source.bucket, source.key, _MAX_MANIFEST_BYTES)
            if isinstance(manifest, dict):
                options = manifest
        return parse_options(options, self.settings.model_name, source, defaults=self.defaults)

    def _json(self, request: Request) -> Any:
        mtype = codecs.media_type(request.content_type)
        if mtype and not codecs.is_json_type(mtype):
            raise BadRequestError(f"send application/json, not {mtype!r}")
        return jsonio.loads(request.get_data(cache=True), self.settings.max_json_values)

    # --- the work -----------------------------------------------------------------------------

    def run(self, job: TrainingRequest) -> TrainingOutcome:
        """Validate, train, evaluate, export, gate and publish one training request."""
        if not self._busy.acquire(blocking=False):
            raise TrainingBusyError("a training is already running in this instance; retry later")
        try:
            return self._run(job)
        finally:
            self._busy.release()

    def _run(self, job: TrainingRequest) -> TrainingOutcome:
        started = time.perf_counter()
        base = {"name": job.model_name, "dataset": {"source": job.source.describe()}}
        try:
            dataset = self._load_dataset(job)
        except DatasetError as exc:
            return self._failed(base, exc)
        except StorageError as exc:
            if is_retryable(exc):
                raise
            return self._failed(base, exc)
        run_id = hashlib.sha256(
            f"{dataset.digest}\n{job.options_fingerprint()}".encode()
        ).hexdigest()[:32]
        claim = self._claim(job, run_id)
        if not isinstance(claim, Claim):
            return claim  # the first result of the same data and options
        lease = _Heartbeat(self.store, claim, self.settings.training_lease_seconds / 3)
        try:
            with lease:
                outcome = self._train_and_publish(job, dataset, claim, lease, started)
            self.store.finish_run(claim, outcome.data)
        except BaseException:
            if not lease.lost:
                self.store.release_run(claim)  # a redelivery may try again at once
            raise
        return outcome

    def _claim(self, job: TrainingRequest, run_id: str) -> Claim | TrainingOutcome:
        """Own the run (create its record, or take over one whose lease expired), or return
        the first result when it is done. While another replica holds a live lease on it, wait
        for that one to finish (then answer its result) or to die (then take over)."""
        name = job.model_name
        deadline = time.monotonic() + self.settings.training_wait_seconds
        waited = False
        while True:
            version = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + run_id[:8]
            details = {
                "version": version,
                "started": time.time(),
                "started_at": _now(),
                "dataset": job.source.describe(),
            }
            got = self.store.claim_run(
                name, run_id, self.owner, self.settings.training_lease_seconds, details
            )
            if isinstance(got, Claim):
                if waited or got.body.get("took_over_from"):
                    log.info(
                        "took over a training whose owner stopped",
                        extra={
                            "model": name,
                            "run": run_id,
                            "from": got.body.get("took_over_from"),
                        },
                    )
                return got
            if got.status == "done":
                reply = dict(got.body.get("reply") or {})
                log.info(
                    "duplicate training request: returning the first result",
                    extra={"model": name, "version": reply.get("version")},
                )
                self.metrics.object_event("duplicate")
                event_type = reply.pop("event_type", MODEL_PUBLISHED)
                return TrainingOutcome(event_type, {**reply, "duplicate": True})
            if time.monotonic() > deadline:
                raise TrainingBusyError(
                    f"the same training is running on {got.body.get('owner')} since "
                    f"{got.body.get('started_at')}; retry later"
                )
            if not waited:
                log.info(
                    "the same training is running on another replica: waiting for it",
                    extra={"model": name, "run": run_id, "owner": got.body.get("owner")},
                )
                waited = True
            time.sleep(min(2.0, self.settings.training_lease_seconds / 4))

    def _load_dataset(self, job: TrainingRequest) -> ds.Dataset:
        prep = job.preprocessing
        limits = self.dataset_limits
        if job.source.kind == "arrays":
            assert job.arrays is not None
            x, y, labels = job.arrays["x"], job.arrays["y"], job.arrays.get("labels")
            return ds.from_arrays(x, y, labels, prep, replace(limits, min_per_class=1))
        if job.source.kind == "folder":
            return ds.from_files(self._folder_files(job.source), prep, self.limits, limits)
        source = job.source
        # On disk, not in memory: the archive is read as a stream (a zip needs to seek).
        with tempfile.TemporaryFile(prefix="lepton-dataset-") as spool:
            try:
                self.storage.get_to_file(source.bucket, source.key, spool, limits.max_archive_bytes)
            except ObjectTooLargeError as exc:
                raise limits.violation(
                    "max_archive_bytes", f"{source.describe()} is larger than allowed"
                ) from exc
            spool.seek(0)
            files = ds.iter_archive(spool, source.key, limits)
            return ds.from_files(files, prep, self.limits, limits)

    def _folder_files(self, source: DatasetSource) -> Iterator[tuple[str, bytes]]:
        """A folder dataset's objects, listed and read one at a time under the dataset limits."""
        limits = self.dataset_limits
        total = 0
        for seen, info in enumerate(self.storage.list_objects(source.bucket, source.prefix), 1):
            if seen > limits.max_entries:
                raise limits.violation(
                    "max_entries", f"{source.describe()} has more than {limits.max_entries} objects"
                )
            relative = info.key[len(source.prefix) :]
            if relative == MANIFEST_NAME or info.key.endswith("/") or ds.is_ignored(relative):
                continue
            if info.size > limits.max_member_bytes:
                raise limits.violation("max_member_bytes", f"{info.key} is {info.size} bytes")
            try:
                obj = self.storage.get_bytes(source.bucket, info.key, limits.max_member_bytes)
            except ObjectTooLargeError as exc:
                raise limits.violation(
                    "max_member_bytes", f"{info.key} is larger than allowed"
                ) from exc
            total += obj.size
            if total > limits.max_total_bytes:
                raise limits.violation(
                    "max_total_bytes", f"the objects of {source.describe()} are larger than allowed"
                )
            yield relative, obj.data

    def _train_and_publish(
        self,
        job: TrainingRequest,
        dataset: ds.Dataset,
        claim: Claim,
        lease: _Heartbeat,
        started: float,
    ) -> TrainingOutcome:
        from lepton_model.training import train

        name, version = job.model_name, str(claim.body["version"])
        log.info(
            "training started",
            extra={
                "model": name,
                "version": version,
                "images": len(dataset),
                "classes": list(dataset.class_names),
                "digest": dataset.digest,
            },
        )

        def on_epoch(epoch: int, logs: dict[str, float]) -> None:
            lease.check()  # stop at once when another replica took the run over
            log.info(
                "epoch",
                extra={
                    "model": name,
                    "version": version,
                    "epoch": epoch,
                    "epochs": job.config.epochs,
                    **{k: round(v, 5) for k, v in logs.items()},
                },
            )

        trained = train(dataset, job.spec(len(dataset.class_names)), job.config, on_epoch)
        promoted, reason, live = self._gate(name, trained, dataset)
        with tempfile.TemporaryDirectory(prefix="lepton-train-") as tmp:
            metadata = export_artifact(
                trained,
                Path(tmp),
                name,
                version,
                dataset.digest,
                extra={"promoted": promoted, "gate": reason, "source": job.source.describe()},
            )
            lease.check()
            self.store.upload_version(name, version, Path(tmp))
        if promoted:
            lease.check()
            move = self.store.advance_pointer(
                name,
                version,
                {
                    "published": _now(),
                    "trained_at": float(claim.body["started"]),
                    "val_accuracy": trained.evaluation.accuracy,
                    "labels": list(trained.class_names),
                },
            )
            if not move.moved:
                promoted = False
                reason = f"a version trained later ({move.live}) is live"
        data = {
            "name": name,
            "version": version,
            "promoted": promoted,
            "gate": reason,
            "previous_version": live,
            "metrics": {k: metadata.metrics[k] for k in ("val_accuracy", "val_count")}
            | {"per_class_accuracy": metadata.metrics["per_class_accuracy"]},
            "location": {
                "bucket": self.store.bucket,
                "prefix": self.store.version_prefix(name, version),
            },
            "dataset": {
                "source": job.source.describe(),
                "digest": dataset.digest,
                "images": len(dataset),
                "classes": list(dataset.class_names),
            },
            "training": {
                "epochs_run": trained.epochs_run,
                "seconds": round(time.perf_counter() - started, 2),
                "images_per_second": round(trained.images_per_second, 1),
            },
        }
        log.info(
            "model published" if promoted else "model stored, not promoted",
            extra={
                "model": name,
                "version": version,
                "reason": reason,
                "val_accuracy": trained.evaluation.accuracy,
            },
        )
        self.metrics.object_event("completed")
        return TrainingOutcome(MODEL_PUBLISHED, data)

    def _gate(self, name: str, trained: Any, dataset: ds.Dataset) -> tuple[bool, str, str | None]:
        """Promote unless below the accuracy floor or clearly worse than the live version
        on this same validation split."""
        accuracy = trained.evaluation.accuracy
        if accuracy < self.settings.min_accuracy:
            return (
                False,
                (
                    f"validation accuracy {accuracy:.4f} is below the floor "
                    f"{self.settings.min_accuracy:.4f}"
                ),
                None,
            )
        pointer = self.store.pointer(name)
        live = pointer.version if pointer else None
        if not live:
            return True, "first version of this model", None
        live_accuracy = self._live_accuracy(name, live, trained, dataset)
        if live_accuracy is None:
            return True, f"replaces {live} (not comparable on this dataset)", live
        if live_accuracy - accuracy > self.settings.gate_tolerance:
            return (
                False,
                (
                    f"validation accuracy {accuracy:.4f} is below the live version "
                    f"{live} ({live_accuracy:.4f}) on the same data"
                ),
                live,
            )
        return True, f"accuracy {accuracy:.4f} vs live {live} {live_accuracy:.4f}", live

    def _live_accuracy(
        self, name: str, live: str, trained: Any, dataset: ds.Dataset
    ) -> float | None:
        """The live model's accuracy on the new model's validation split (same labels only)."""
        from lepton_model.classifier import load_classifier
        from lepton_model.evaluation import evaluate

        with tempfile.TemporaryDirectory(prefix="lepton-live-") as tmp:
            try:
                raw = self.store.metadata(name, live)
                expected = raw.get("artifacts", {}).get(KERAS_FILE)
                self.store.download(name, live, KERAS_FILE, expected, Path(tmp) / KERAS_FILE)
                (Path(tmp) / METADATA_FILE).write_text(json.dumps(raw))
                classifier = load_classifier(Path(tmp), "tensorflow")
            except (StorageError, LeptonModelError) as exc:
                if is_retryable(exc):
                    raise
                return None
            if classifier.metadata.labels != trained.class_names or (
                classifier.input_shape != dataset.images.shape[1:]
            ):
                return None
            _, validation = ds.split(dataset, trained.config.validation_split, trained.config.seed)
            probabilities = classifier.probabilities(validation.images)
            return evaluate(probabilities, validation.labels, dataset.class_names).accuracy

    def _failed(self, base: dict[str, Any], exc: Exception) -> TrainingOutcome:
        log.warning(
            "training failed",
            extra={"model": base["name"], "dataset": base["dataset"], "error": str(exc)},
        )
        self.metrics.object_event("failed")
        body = error_body(exc)["error"]
        return TrainingOutcome(TRAINING_FAILED, {**base, "error": body, "reason": body["message"]})


@dataclass(frozen=True)
class TrainingOutcome:
    """The reply type and data of one training request."""

    event_type: str
    data: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.event_type == MODEL_PUBLISHED


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _devices() -> list[str]:
    try:
        import tensorflow as tf

        return [d.name for d in tf.config.list_physical_devices()]
    except ImportError:
        return []


class _Heartbeat:
    """Renews a run's lease in the background while the run is trained and published; `check()`
    raises LeaseLostError in the training thread once another replica took the run over."""

    def __init__(self, store: ModelStore, claim: Claim, interval: float) -> None:
        self.store = store
        self.claim = claim
        self.interval = interval
        self.lost: LeaseLostError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.check()

    def check(self) -> None:
        if self.lost is not None:
            raise self.lost

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.store.renew(self.claim)
            except LeaseLostError as exc:
                log.error("lost the run's lease to another replica", extra={"error": str(exc)})
                self.lost = exc
                return
            except StorageError as exc:  # a passing outage: the lease outlasts a few misses
                log.warning("cannot renew the run's lease", extra={"error": str(exc)})
