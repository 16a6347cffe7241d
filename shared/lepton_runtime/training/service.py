"""The training function: datasets in, versioned models out.

A dataset archive (`datasets/<name>.zip|.tar.gz`) or a folder's `datasets/<name>/manifest.json`
starts a training; so does an HTTP POST naming a dataset (or carrying the seed article's
x_train/y_train arrays). The model is trained and evaluated with lepton_model, exported, stored
under `<model>/<version>/`, and made live by writing `<model>/latest.json` last, unless the
promotion gate holds it back. The same data with the same options never trains twice.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cloudevents.http import CloudEvent
from flask import Request, Response

from lepton_model import datasets as ds
from lepton_model.artifacts import METADATA_FILE, export_artifact
from lepton_model.errors import DatasetError, LeptonModelError
from lepton_model.imaging import ImageLimits
from lepton_runtime import codecs, jsonio
from lepton_runtime.emit import MODEL_PUBLISHED, TRAINING_FAILED, reply_event
from lepton_runtime.errors import (
    BadRequestError,
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
from lepton_runtime.inference.registry import POINTER_FILE
from lepton_runtime.metrics import FunctionMetrics
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

RUNS_FOLDER = "runs"
_MAX_MANIFEST_BYTES = 1024 * 1024
_STALE_RUN_SECONDS = 6 * 3600


class TrainingService:
    """Wires settings and storage to lepton_model's training; one training at a time."""

    role = "train"
    max_workers = 1  # one training at a time per instance (containerConcurrency 1)

    def __init__(
        self, settings: Settings, storage: Storage, metrics: FunctionMetrics | None = None
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.metrics = metrics or FunctionMetrics("train")
        self.event_source = settings.event_source or f"/lepton/{settings.service or 'train'}"
        self.limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
        self._busy = threading.Lock()
        self.defaults = {"epochs": settings.train_epochs}

    @classmethod
    def from_env(cls) -> TrainingService:
        settings = Settings.from_env()
        return cls(settings, Storage.from_settings(settings))

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
        run_id = hashlib.sha256(f"{dataset.digest}\n{job.options_fingerprint()}".encode())
        run_key = self._run_key(job.model_name, run_id.hexdigest()[:32])
        previous = self.storage.get_json(
            self.settings.models.bucket, run_key, 1024 * 1024, missing_ok=True
        )
        if isinstance(previous, dict) and previous.get("status") == "done":
            log.info(
                "duplicate training request: returning the first result",
                extra={"model": job.model_name, "version": previous["reply"].get("version")},
            )
            self.metrics.object_event("duplicate")
            return TrainingOutcome(MODEL_PUBLISHED, {**previous["reply"], "duplicate": True})
        if (
            isinstance(previous, dict)
            and previous.get("status") == "running"
            and (time.time() - float(previous.get("started", 0)) < _STALE_RUN_SECONDS)
        ):
            raise TrainingBusyError(
                f"the same training is already running (since {previous.get('started_at')})"
            )
        version = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + run_id.hexdigest()[:8]
        self.storage.put_json(
            self.settings.models.bucket,
            run_key,
            {"status": "running", "version": version, "started": time.time(), "started_at": _now()},
        )
        try:
            outcome = self._train_and_publish(job, dataset, version, started)
        except BaseException:
            self.storage.delete(self.settings.models.bucket, run_key)
            raise
        self.storage.put_json(
            self.settings.models.bucket,
            run_key,
            {"status": "done", "finished_at": _now(), "reply": outcome.data},
        )
        return outcome

    def _load_dataset(self, job: TrainingRequest) -> ds.Dataset:
        prep = job.preprocessing
        limits = ds.DatasetLimits(max_total_bytes=self.settings.max_dataset_bytes)
        if job.source.kind == "arrays":
            assert job.arrays is not None
            return ds.from_arrays(job.arrays["x"], job.arrays["y"], job.arrays.get("labels"), prep)
        if job.source.kind == "archive":
            obj = self.storage.get_bytes(
                job.source.bucket, job.source.key, self.settings.max_dataset_bytes
            )
            files = ds.iter_archive(obj.data, job.source.key)
        else:
            files = self._folder_files(job.source)
        return ds.from_files(files, prep, self.limits, limits)

    def _folder_files(self, source: DatasetSource) -> list[tuple[str, bytes]]:
        files: list[tuple[str, bytes]] = []
        total = 0
        for info in self.storage.list_objects(source.bucket, source.prefix):
            relative = info.key[len(source.prefix) :]
            if relative == MANIFEST_NAME or info.key.endswith("/"):
                continue
            total += info.size or 0
            if total > self.settings.max_dataset_bytes:
                raise DatasetError(
                    f"the dataset is larger than {self.settings.max_dataset_bytes} bytes"
                )
            obj = self.storage.get_bytes(source.bucket, info.key, self.settings.max_image_bytes)
            files.append((relative, obj.data))
        return files

    def _train_and_publish(
        self, job: TrainingRequest, dataset: ds.Dataset, version: str, started: float
    ) -> TrainingOutcome:
        from lepton_model.training import train

        name = job.model_name
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
            log.info(
                "epoch",
                extra={
                    "model": name,
                    "version": version,
                    "epoch": epoch,
                    **{k: round(v, 5) for k, v in logs.items()},
                },
            )

        trained = train(dataset, job.spec(len(dataset.class_names)), job.config, on_epoch)
        promoted, reason, live = self._gate(name, trained, dataset)
        location = self.settings.models.key(f"{name}/{version}/")
        with tempfile.TemporaryDirectory(prefix="lepton-train-") as tmp:
            metadata = export_artifact(
                trained,
                Path(tmp),
                name,
                version,
                dataset.digest,
                extra={"promoted": promoted, "gate": reason, "source": job.source.describe()},
            )
            pointer = (
                {
                    "version": version,
                    "published": _now(),
                    "val_accuracy": trained.evaluation.accuracy,
                    "labels": list(trained.class_names),
                }
                if promoted
                else None
            )
            self.storage.publish(
                self.settings.models.bucket,
                location,
                {
                    path.name: path
                    for path in sorted(Path(tmp).iterdir())
                    if path.name != METADATA_FILE
                }
                | {METADATA_FILE: Path(tmp) / METADATA_FILE},
                pointer_key=self.settings.models.key(f"{name}/{POINTER_FILE}")
                if promoted
                else None,
                pointer_body=pointer,
            )
        data = {
            "name": name,
            "version": version,
            "promoted": promoted,
            "gate": reason,
            "previous_version": live,
            "metrics": {k: metadata.metrics[k] for k in ("val_accuracy", "val_count")}
            | {"per_class_accuracy": metadata.metrics["per_class_accuracy"]},
            "location": {"bucket": self.settings.models.bucket, "prefix": location},
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
        pointer = self.storage.get_json(
            self.settings.models.bucket,
            self.settings.models.key(f"{name}/{POINTER_FILE}"),
            64 * 1024,
            missing_ok=True,
        )
        live = str(pointer.get("version")) if isinstance(pointer, dict) else None
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
                for filename in (METADATA_FILE, "model.keras"):
                    obj = self.storage.get_bytes(
                        self.settings.models.bucket,
                        self.settings.models.key(f"{name}/{live}/{filename}"),
                        512 * 1024 * 1024,
                    )
                    (Path(tmp) / filename).write_bytes(obj.data)
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

    def _run_key(self, name: str, run_id: str) -> str:
        return self.settings.models.key(f"{name}/{RUNS_FOLDER}/{run_id}.json")


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
