"""The training function: datasets in, versioned models out.

A dataset archive (`datasets/<name>.zip|.tar.gz`) or a folder's `datasets/<name>/manifest.json`
starts a training; so does an HTTP POST naming a dataset (or carrying the seed article's
x_train/y_train arrays). The model is trained and evaluated with lepton_model, exported, stored
under `<model>/<version>/`, and made live by writing `<model>/latest.json` last, unless the
promotion gate holds it back. The same data with the same options never trains twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cloudevents.http import CloudEvent
from flask import Request, Response

from lepton_model import datasets as ds
from lepton_model.artifacts import KERAS_FILE, METADATA_FILE, ModelMetadata, export_artifact
from lepton_model.datasets import MANIFEST_NAME
from lepton_model.errors import DatasetError, LeptonModelError
from lepton_model.input_choice import InputChoice, choose_input
from lepton_runtime import jsonio
from lepton_runtime.errors import (
    BadRequestError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    StorageError,
    TrainingBusyError,
    is_retryable,
    raise_if_transient,
)
from lepton_runtime.events.auth import EventAuthenticator
from lepton_runtime.events.inbound import (
    InboundEvent,
    ObjectRef,
    authorize,
    looks_like_event,
    parse_cloudevent,
    parse_json,
)
from lepton_runtime.events.outbound import MODEL_PUBLISHED, TRAINING_FAILED, reply_event
from lepton_runtime.http import wire
from lepton_runtime.http.responses import (
    Work,
    body_origin,
    cloudevent_origin,
    error_body,
    event_response,
    failure_reply,
    json_response,
    respond,
)
from lepton_runtime.metrics import FunctionMetrics
from lepton_runtime.models.store import Claim, LeaseLostError, ModelStore
from lepton_runtime.settings import Settings
from lepton_runtime.storage import Storage
from lepton_runtime.training.requests import (
    DatasetSource,
    TrainingRequest,
    dataset_source_for_key,
    parse_http_request,
    parse_options,
)

log = logging.getLogger("lepton.train")

# Reads a dataset's files again: (path, bytes) of those whose `Dataset.sources` name is wanted
# (None: all of them).
Reread = Callable[[set[str] | None], Iterator[tuple[str, bytes]]]


@dataclass(frozen=True)
class _Loaded:
    """A decoded dataset, how to read its files again (None for arrays), and the input chosen
    from its files (None when the request set it all)."""

    job: TrainingRequest  # as the data made it: options from an archive's manifest, input chosen
    dataset: ds.Dataset
    reread: Reread | None
    choice: InputChoice | None = None


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
        mtype = wire.media_type(request.content_type)
        if mtype and not wire.is_json_type(mtype):
            raise BadRequestError(f"send application/json, not {mtype!r}")
        return jsonio.loads(request.get_data(cache=True), self.settings.max_json_values)

    # --- the work -----------------------------------------------------------------------------

    def run(self, job: TrainingRequest) -> TrainingOutcome:
        """Validate, train, evaluate, export, gate and publish one training request; how it
        goes is written to the dataset's training status (ModelStore.read_status)."""
        if not self._busy.acquire(blocking=False):
            raise TrainingBusyError("a training is already running in this instance; retry later")
        status = TrainingStatus(self.store, job.model_name, job.source.describe())
        try:
            status.report("loading")
            outcome = self._run(job, status)
            stage = "done" if outcome.ok else "failed"
            status.report(stage, event_type=outcome.event_type, reply=outcome.data)
            return outcome
        except Exception as exc:
            stage = "retrying" if is_retryable(exc) else "failed"
            status.report(stage, error=error_body(exc)["error"])
            raise
        finally:
            self._busy.release()

    def _run(self, job: TrainingRequest, status: TrainingStatus) -> TrainingOutcome:
        with contextlib.ExitStack() as open_files:
            started = time.perf_counter()
            base = {"name": job.model_name, "dataset": {"source": job.source.describe()}}
            try:
                loaded = open_files.enter_context(self._load_dataset(job))
            except DatasetError as exc:
                return self._failed(base, exc)
            except StorageError as exc:
                raise_if_transient(exc)
                return self._failed(base, exc)
            return self._train_once(loaded, started, status)

    def _train_once(
        self, loaded: _Loaded, started: float, status: TrainingStatus
    ) -> TrainingOutcome:
        """Claim the run of this dataset and options, train and publish it, record the result."""
        job = loaded.job
        run_id = hashlib.sha256(
            f"{loaded.dataset.digest}\n{job.options_fingerprint()}".encode()
        ).hexdigest()[:32]
        claim = self._claim(job, run_id)
        if not isinstance(claim, Claim):
            return claim  # the first result of the same data and options
        lease = _Heartbeat(self.store, claim, self.settings.training_lease_seconds / 3)
        try:
            with lease:
                stored = self._stored_version(job.model_name, run_id)
                if stored is not None:
                    outcome = self._adopt(loaded, claim, stored, started)
                else:
                    outcome = self._train_and_publish(loaded, claim, lease, started, status)
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
            version = datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + _version_suffix(run_id)
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

    @contextlib.contextmanager
    def _load_dataset(self, job: TrainingRequest) -> Iterator[_Loaded]:
        """The decoded dataset, and a way to read some of its files' bytes again (the gate
        decodes the test images with the live model's own preprocessing); None for arrays."""
        prep = job.preprocessing
        limits = self.dataset_limits
        source = job.source
        if source.kind == "arrays":
            assert job.arrays is not None
            x, y, labels = job.arrays["x"], job.arrays["y"], job.arrays.get("labels")
            array_limits = replace(limits, min_per_class=1)
            yield _Loaded(job, ds.from_arrays(x, y, labels, prep, array_limits), None)
            return
        if source.kind == "folder":

            def objects(wanted: set[str] | None = None) -> Iterator[tuple[str, bytes]]:
                return self._folder_files(source, wanted)

            yield self._decoded(job, objects)
            return
        # On disk, not in memory: the archive is read as a stream (a zip needs to seek), and
        # kept until the training is over so the gate can read its test images again.
        with tempfile.TemporaryFile(prefix="lepton-dataset-") as spool:
            try:
                self.storage.get_to_file(source.bucket, source.key, spool, limits.max_archive_bytes)
            except ObjectTooLargeError as exc:
                raise limits.violation(
                    "max_archive_bytes", f"{source.describe()} is larger than allowed"
                ) from exc

            def members(wanted: set[str] | None = None) -> Iterator[tuple[str, bytes]]:
                spool.seek(0)
                for name, data in ds.iter_archive(spool, source.key, limits):
                    if wanted is None or ds.source_name(name) in wanted:
                        yield name, data

            manifest = self._archive_manifest(members)
            if manifest is not None:  # its options, under what the request itself said
                job = parse_options(
                    {**manifest, **job.request_options},
                    self.settings.model_name,
                    source,
                    defaults=self.defaults,
                )
            yield self._decoded(job, members)

    def _decoded(self, job: TrainingRequest, files: Reread) -> _Loaded:
        """Decode a file dataset with the request's input, or one chosen from the files."""
        choice = self._input_for(job, files)
        if choice is not None:
            job = replace(job, preprocessing=choice.preprocessing)
        dataset = ds.from_files(files(None), job.preprocessing, self.limits, self.dataset_limits)
        return _Loaded(job, dataset, files, choice)

    def _archive_manifest(self, members: Reread) -> dict[str, Any] | None:
        """The options of an archive whose first member is a manifest.json (`lepton train`
        writes one)."""
        data = ds.archive_manifest(members(None))
        if data is None:
            return None
        try:
            manifest = jsonio.loads(data, what=f"the archive's {MANIFEST_NAME}")
        except BadRequestError as exc:
            raise DatasetError(str(exc)) from exc
        if not isinstance(manifest, dict):
            raise DatasetError(f"the archive's {MANIFEST_NAME} must be a JSON object of options")
        return manifest

    def _input_for(self, job: TrainingRequest, files: Reread) -> InputChoice | None:
        """The request's preprocessing, with channels and input size chosen from the files
        where the request did not set them (one pass over the files first)."""
        choose = {part: part not in job.explicit for part in ("channels", "image_size")}
        choose_background = "background" not in job.explicit
        if not any(choose.values()) and not (choose_background and job.preprocessing.channels == 3):
            return None
        choice = choose_input(
            files(None),
            job.preprocessing,
            choose_channels=choose["channels"],
            choose_size=choose["image_size"],
            choose_background=choose_background,
            image_limits=self.limits,
            limits=self.dataset_limits,
        )
        log.info("input chosen from the data", extra={"model": job.model_name, **choice.to_dict()})
        return choice

    def _folder_files(
        self, source: DatasetSource, wanted: set[str] | None = None
    ) -> Iterator[tuple[str, bytes]]:
        """A folder dataset's objects (those named in `wanted`, when given), listed and read one
        at a time under the dataset limits."""
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
            if wanted is not None and ds.source_name(relative) not in wanted:
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
        loaded: _Loaded,
        claim: Claim,
        lease: _Heartbeat,
        started: float,
        status: TrainingStatus,
    ) -> TrainingOutcome:
        """Train, gate, publish, reply: the run's work once its dataset is loaded and claimed."""
        version = str(claim.body["version"])
        trained = self._fit(loaded, version, lease, status)
        published = self._publish(loaded, claim, trained, lease)
        log.info(
            "model published" if published.promoted else "model stored, not promoted",
            extra={
                "model": loaded.job.model_name,
                "version": version,
                "reason": published.reason,
                "test_accuracy": trained.evaluation.accuracy,
                "val_accuracy": trained.validation.accuracy,
            },
        )
        self.metrics.object_event("completed")
        data = self._published_reply(loaded, version, published, started)
        return TrainingOutcome(MODEL_PUBLISHED, data)

    def _fit(self, loaded: _Loaded, version: str, lease: _Heartbeat, status: TrainingStatus) -> Any:
        """Train on the loaded dataset, reporting each epoch to the status object and the log."""
        from lepton_model.training import train

        job, dataset = loaded.job, loaded.dataset
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
        progress = {"version": version, "epochs": job.config.epochs, "images": len(dataset)}
        status.report("training", epoch=0, **progress)

        def on_epoch(epoch: int, logs: dict[str, float]) -> None:
            lease.check()  # stop at once when another replica took the run over
            metrics = {k: round(v, 5) for k, v in logs.items()}
            status.report("training", epoch=epoch, metrics=metrics, every=1.0, **progress)
            log.info(
                "epoch",
                extra={
                    "model": name,
                    "version": version,
                    "epoch": epoch,
                    "epochs": job.config.epochs,
                    **metrics,
                },
            )

        trained = train(dataset, job.spec(len(dataset.class_names)), job.config, on_epoch)
        status.report("publishing", epoch=trained.epochs_run, **progress)
        return trained

    def _publish(
        self, loaded: _Loaded, claim: Claim, trained: Any, lease: _Heartbeat
    ) -> _Published:
        """Gate the trained model, store its version, and move the pointer when promoted."""
        job = loaded.job
        name, version = job.model_name, str(claim.body["version"])
        promoted, reason, live, live_accuracy = self._gate(
            name, trained, loaded.reread, job.replace
        )
        with tempfile.TemporaryDirectory(prefix="lepton-train-") as tmp:
            metadata = export_artifact(
                trained,
                Path(tmp),
                name,
                version,
                loaded.dataset.digest,
                extra={
                    "promoted": promoted,
                    "gate": reason,
                    "live_version": live,
                    "live_test_accuracy": live_accuracy,
                    "source": job.source.describe(),
                    "input_chosen": loaded.choice.reasons if loaded.choice else {},
                    # Which run stored it, and when that run started (the pointer's order):
                    # a later attempt of the run adopts the version instead of training again.
                    "run": claim.run_id,
                    "trained_at": float(claim.body["started"]),
                },
            )
            lease.check()
            self.store.upload_version(name, version, Path(tmp))
        if promoted:
            lease.check()
            promoted, reason = self._make_live(metadata, float(claim.body["started"]), reason)
        return _Published(promoted, reason, live, live_accuracy, metadata)

    def _make_live(
        self, metadata: ModelMetadata, trained_at: float, reason: str
    ) -> tuple[bool, str]:
        """Move the pointer to a stored version unless one trained later is live; returns
        (live, why)."""
        move = self.store.advance_pointer(
            metadata.name,
            metadata.version,
            {
                "published": _now(),
                "trained_at": trained_at,
                "test_accuracy": metadata.metrics["test_accuracy"],
                "val_accuracy": metadata.metrics["val_accuracy"],
                "labels": list(metadata.labels),
            },
        )
        if move.live != metadata.version:
            return False, f"a version trained later ({move.live}) is live"
        return True, reason

    def _stored_version(self, name: str, run_id: str) -> ModelMetadata | None:
        """The version an earlier attempt of this run stored whole (its metadata.json, written
        after every other file, names the run), or None. An attempt that stored its version
        and then stopped (killed before the pointer or the run's record was written, or the
        store failing just then) is answered from that version, never trained again."""
        for version in reversed(self.store.versions(name)):
            if not version.endswith(_version_suffix(run_id)):
                continue
            try:
                raw = self.store.metadata(name, version)
            except ObjectNotFoundError:
                continue  # stored in part: metadata.json is written last
            if raw.get("training", {}).get("run") == run_id:
                return ModelMetadata.from_dict(raw)
        return None

    def _adopt(
        self, loaded: _Loaded, claim: Claim, metadata: ModelMetadata, started: float
    ) -> TrainingOutcome:
        """Finish a run from the version an earlier attempt stored: make it live as its gate
        decided then (unless a version trained later is live now), and reply as that attempt
        would have."""
        training = metadata.training
        promoted, reason = bool(training.get("promoted")), str(training.get("gate", ""))
        if promoted:
            promoted, reason = self._make_live(metadata, float(training["trained_at"]), reason)
        log.info(
            "an earlier attempt of this run stored its version: adopted, not trained again",
            extra={"model": metadata.name, "version": metadata.version, "promoted": promoted},
        )
        claim.body["version"] = metadata.version
        live, live_accuracy = training.get("live_version"), training.get("live_test_accuracy")
        published = _Published(promoted, reason, live, live_accuracy, metadata)
        self.metrics.object_event("completed")
        data = self._published_reply(loaded, metadata.version, published, started)
        return TrainingOutcome(MODEL_PUBLISHED, data)

    def _published_reply(
        self, loaded: _Loaded, version: str, published: _Published, started: float
    ) -> dict[str, Any]:
        """The data of the ai.lepton.model.published reply (and of the run's done record)."""
        job, dataset, metadata = loaded.job, loaded.dataset, published.metadata
        name = job.model_name
        return {
            "name": name,
            "version": version,
            "promoted": published.promoted,
            "gate": published.reason,
            "previous_version": published.live,
            "metrics": {
                key: metadata.metrics[key]
                for key in (
                    "test_accuracy",
                    "test_count",
                    "val_accuracy",
                    "val_count",
                    "per_class_accuracy",
                )
            }
            | {"live_test_accuracy": published.live_accuracy},
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
            "input": {
                "channels": job.preprocessing.channels,
                "image_size": [job.preprocessing.height, job.preprocessing.width],
                "chosen_from_data": loaded.choice.reasons if loaded.choice else {},
            },
            "training": {
                "epochs_run": metadata.training["epochs_run"],
                "seconds": round(time.perf_counter() - started, 2),
                "images_per_second": metadata.training["images_per_second"],
            },
        }

    def _gate(
        self, name: str, trained: Any, reread: Reread | None, replace_labels: bool = False
    ) -> tuple[bool, str, str | None, float | None]:
        """(promote, why, live version, live model's test accuracy): promote unless below the
        accuracy floor on the test split, the live model tells other labels apart (unless
        `replace_labels`), or it is clearly better on the same test images, each model reading
        them with its own preprocessing."""
        accuracy = trained.evaluation.accuracy
        floor = self.settings.min_accuracy
        if accuracy < floor:
            why = f"test accuracy {accuracy:.4f} is below the floor {floor:.4f}"
            return False, why, None, None
        pointer = self.store.pointer(name)
        live = pointer.version if pointer else None
        if not live:
            return True, "first version of this model", None, None
        live_labels = self._live_labels(name, live)
        if live_labels is not None and set(live_labels) != set(trained.class_names):
            if not replace_labels:
                why = (
                    f"the live version {live} tells {_labels(live_labels)} apart; this dataset "
                    f"has {_labels(trained.class_names)}: not replaced (train under another "
                    "model name, or ask to replace it: replace=true, lepton train --replace)"
                )
                return False, why, live, None
            return True, f"replaces {live} and its labels, as asked", live, None
        live_accuracy = self._live_accuracy(name, live, trained, reread)
        if live_accuracy is None:
            return True, f"replaces {live} (not comparable on this dataset)", live, None
        if live_accuracy - accuracy > self.settings.gate_tolerance:
            why = (
                f"test accuracy {accuracy:.4f} is below the live version {live} "
                f"({live_accuracy:.4f}) on the same test images"
            )
            return False, why, live, live_accuracy
        why = f"test accuracy {accuracy:.4f} vs live {live} {live_accuracy:.4f}"
        return True, why, live, live_accuracy

    def _live_labels(self, name: str, live: str) -> list[str] | None:
        """The live version's labels (None when its metadata cannot be read for good)."""
        try:
            labels = self.store.metadata(name, live).get("labels")
        except (StorageError, LeptonModelError) as exc:
            raise_if_transient(exc)
            return None
        return [str(label) for label in labels] if isinstance(labels, list) else None

    def _live_accuracy(
        self, name: str, live: str, trained: Any, reread: Reread | None
    ) -> float | None:
        """The live model's accuracy on the new model's test images, read again and decoded
        with the live model's own preprocessing (arrays: as given, when the shapes agree).
        None when it cannot be compared: another label set, or no live model to load."""
        from lepton_model.classifier import load_classifier

        test = trained.test_set
        with tempfile.TemporaryDirectory(prefix="lepton-live-") as tmp:
            try:
                raw = self.store.metadata(name, live)
                expected = raw.get("artifacts", {}).get(KERAS_FILE)
                self.store.download(name, live, KERAS_FILE, expected, Path(tmp) / KERAS_FILE)
                (Path(tmp) / METADATA_FILE).write_text(json.dumps(raw))
                classifier = load_classifier(Path(tmp), "tensorflow")
            except (StorageError, LeptonModelError) as exc:
                raise_if_transient(exc)
                return None
            if set(classifier.metadata.labels) != set(trained.class_names):
                return None
            truth = {
                source: test.class_names[label]
                for source, label in zip(test.sources, test.labels.tolist(), strict=True)
            }
            if reread is not None and truth:
                files = reread(set(truth))
                accuracy, _ = classifier.accuracy_on(
                    ((data, truth[ds.source_name(path)]) for path, data in files), self.limits
                )
                return accuracy
            if classifier.input_shape != test.images.shape[1:]:
                return None
            predicted = np.argmax(classifier.probabilities(test.images), axis=1)
            labels = np.asarray(classifier.metadata.labels, dtype=object)[predicted]
            expected_labels = np.asarray(test.class_names, dtype=object)[test.labels]
            return float(np.mean(labels == expected_labels))

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


@dataclass(frozen=True)
class _Published:
    """What publishing a trained version did: promoted or why not, and the live one before."""

    promoted: bool
    reason: str
    live: str | None
    live_accuracy: float | None
    metadata: Any


def _labels(names: Any) -> str:
    shown = ", ".join(str(name) for name in list(names)[:8])
    return f"[{shown}{', ...' if len(list(names)) > 8 else ''}]"


def _version_suffix(run_id: str) -> str:
    """How the name of every version a run stores ends (its start time comes first)."""
    return f"-{run_id[:8]}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _devices() -> list[str]:
    try:
        import tensorflow as tf

        return [d.name for d in tf.config.list_physical_devices()]
    except ImportError:
        return []


class TrainingStatus:
    """Writes how one training goes to its dataset's status object (ModelStore.write_status):
    the stage, progress and, at the end, the reply. Best effort: a status that cannot be
    written is logged, never a reason to fail the training."""

    def __init__(self, store: ModelStore, name: str, source: str) -> None:
        self.store, self.name, self.source = store, name, source
        self.started = time.time()
        self._last = 0.0
        self._fields: dict[str, Any] = {}  # progress so far: each report adds to it

    def report(self, stage: str, every: float = 0.0, **fields: Any) -> None:
        """Write the status now (or, with `every`, if that many seconds passed since the last)."""
        self._fields.update(fields)
        now = time.time()
        if every and now - self._last < every:
            return
        self._last = now
        body = {
            **self._fields,
            "model": self.name,
            "source": self.source,
            "stage": stage,
            "started": self.started,
            "updated": now,
        }
        try:
            self.store.write_status(self.name, self.source, body)
        except StorageError as exc:
            log.warning("training status not written", extra={"error": str(exc), "stage": stage})


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
