"""The live model of the inference function: loaded from the model store, swapped atomically.

`<model>/latest.json` (or a pin) names the version that should be live. Its metadata.json is
read first; the files the runtime needs are fetched into the verified cache (each checked
against the size and sha256 metadata.json recorded, written whole or not at all), so a runtime
never meets a folder that lacks what it needs and a transient fault is never cached. A new
version is loaded beside the old one and swapped in with one reference assignment, so a request
sees either the old model or the new one, whole.

One loader thread keeps it current: it loads at start, again on every poll interval, and at once
when asked (`request_refresh`, e.g. on `ai.lepton.model.published`); requests that arrive while
a load runs are coalesced into one more load after it, never dropped. A load that fails is
retried with backoff (0.2 s doubling to 30 s) until it succeeds; the reason is on readiness and
in the log.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lepton_model.artifacts import KERAS_FILE, METADATA_FILE, TFLITE_FILE, ModelMetadata
from lepton_model.classifier import Classifier, load_classifier
from lepton_model.errors import ArtifactError, LeptonModelError, RuntimeUnavailableError
from lepton_model.predictors import litert_available, tensorflow_available
from lepton_runtime.errors import LeptonError, ModelNotReadyError, ObjectNotFoundError
from lepton_runtime.metrics import FunctionMetrics
from lepton_runtime.models.store import ModelCache, ModelStore
from lepton_runtime.settings import Settings

log = logging.getLogger("lepton.models")

Loader = Callable[[Path, str, int], Classifier]
_MAX_BACKOFF_SECONDS = 30.0
_SPARE_CACHED_VERSIONS = 2  # besides the live one: a rollback needs no download


class ModelRegistry:
    """Holds the classifier being served and keeps it current."""

    def __init__(
        self,
        settings: Settings,
        store: ModelStore,
        metrics: FunctionMetrics | None = None,
        loader: Loader | None = None,
    ) -> None:
        self._settings = settings
        self.name = settings.model_name
        self.store = store
        self.cache = ModelCache(settings.model_cache_dir)
        self._metrics = metrics
        self._loader: Loader = loader or load_classifier  # type: ignore[assignment]
        self._current: Classifier | None = None
        self._loaded = threading.Event()  # set once any model is live
        self._load_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str = ""
        self.failures = 0

    @property
    def current(self) -> Classifier | None:
        return self._current

    def require(self) -> Classifier:
        classifier = self._current
        if classifier is None:
            detail = f" ({self.last_error})" if self.last_error else ""
            raise ModelNotReadyError(f"no model is loaded yet for {self.name!r}{detail}")
        return classifier

    def target_version(self) -> str | None:
        """The version that should be live: the pin, or what latest.json names (None if none)."""
        if self._settings.model_version:
            return self._settings.model_version
        pointer = self.store.pointer(self.name)
        return pointer.version if pointer else None

    def refresh(self) -> bool:
        """Load the target version if it is not the one being served; True when swapped.

        One load at a time; a caller arriving during a load waits for it, then checks again.
        """
        with self._load_lock:
            try:
                version = self.target_version()
                current = self._current
                if version is None:
                    self.last_error = f"nothing published yet for {self.name!r}"
                    return False
                if current is not None and current.version == version:
                    self.last_error = ""
                    return False
                classifier = self._load(version)
            except (LeptonError, LeptonModelError, OSError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self._metrics:
                    self._metrics.model_load_failed()
                raise
            self._current = classifier
            self._loaded.set()
            self.last_error = ""
            if self._metrics:
                self._metrics.model_loaded(
                    classifier.name, classifier.version, classifier.predictor.runtime
                )
            log.info(
                "model live",
                extra={
                    "model": classifier.name,
                    "version": version,
                    "runtime": classifier.predictor.runtime,
                    "previous": current.version if current else None,
                },
            )
            self.cache.evict(self.name, {version}, _SPARE_CACHED_VERSIONS)
            return True

    def _load(self, version: str) -> Classifier:
        raw = self.store.metadata(self.name, version)
        metadata = ModelMetadata.from_dict(raw)
        if metadata.version != version:
            raise ArtifactError(
                f"{self.name}/{version}/metadata.json names version {metadata.version!r}: the "
                "version was published incompletely or by hand"
            )
        published = set(metadata.artifacts) or set(metadata.files)
        runtime, filename = self._runtime_file(metadata, published)
        folder = self.cache.folder(self.name, version)
        try:
            self._fetch(metadata, filename)
        except ObjectNotFoundError:
            # Gone from the store although published: in `auto`, the Keras file will do if
            # this image can run it. A transient fault is raised instead (and retried).
            if runtime != "litert" or self._settings.runtime != "auto":
                raise
            runtime, filename = self._runtime_file(metadata, published - {TFLITE_FILE})
            self._fetch(metadata, filename)
        _write_atomically(folder / METADATA_FILE, json.dumps(raw).encode())
        classifier = self._loader(folder, runtime, self._settings.top_k)
        if classifier.version != version:
            raise ArtifactError(f"{folder} holds version {classifier.version!r}, not {version}")
        return classifier

    def _fetch(self, metadata: ModelMetadata, filename: str) -> None:
        expected = metadata.artifacts.get(filename)
        name, version = metadata.name, metadata.version
        if not self.cache.has(name, version, filename, expected):
            target = self.cache.folder(name, version) / filename
            self.store.download(name, version, filename, expected, target)

    def _runtime_file(self, metadata: ModelMetadata, published: set[str]) -> tuple[str, str]:
        """The runtime to use and the one artifact file it needs, from what was published."""
        wanted = self._settings.runtime
        if wanted in ("auto", "litert") and TFLITE_FILE in published and litert_available():
            return "litert", TFLITE_FILE
        if wanted == "litert":
            if not litert_available():
                raise RuntimeUnavailableError("LiteRT (ai-edge-litert) is not installed")
            raise ArtifactError(f"{metadata.name}/{metadata.version} has no {TFLITE_FILE}")
        if KERAS_FILE not in published:
            raise ArtifactError(
                f"{metadata.name}/{metadata.version} has no file this runtime can load "
                f"(published: {', '.join(sorted(published)) or 'nothing'})"
            )
        if not tensorflow_available():
            raise RuntimeUnavailableError(
                f"{metadata.name}/{metadata.version} needs TensorFlow, which is not installed"
            )
        return "tensorflow", KERAS_FILE

    # --- the loader thread --------------------------------------------------------------------

    def start(self) -> None:
        """Load in the background now, then on every poll interval and when asked."""
        self._thread = threading.Thread(target=self._run, name="model-loader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request_refresh(self) -> None:
        """Ask the loader thread to check the pointer now (never blocks; coalesced)."""
        self._wake.set()

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            if delay:
                self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.refresh()
            except (LeptonError, LeptonModelError, OSError, ValueError) as exc:
                self.failures += 1
                delay = min(0.2 * 2 ** (self.failures - 1), _MAX_BACKOFF_SECONDS)
                log.warning(
                    "model load failed; retrying",
                    extra={
                        "model": self.name,
                        "error": str(exc),
                        "attempt": self.failures,
                        "retry_in": delay,
                    },
                )
                continue
            self.failures = 0
            if self._current is None:  # nothing published yet: look again soon
                delay = min(max(delay * 2, 0.2), 5.0)
                continue
            interval = self._settings.model_poll_seconds
            delay = interval if interval > 0 else 3600.0

    def wait_loaded(self, timeout: float) -> bool:
        """Block until a model is live (True) or `timeout` seconds passed (False)."""
        return self._loaded.wait(timeout)

    def status(self) -> dict[str, Any]:
        """What readiness says about this model."""
        current = self._current
        return {
            "model": self.name,
            "version": current.version if current else None,
            "runtime": current.predictor.runtime if current else None,
            "reason": self.last_error or None,
            "failed_attempts": self.failures,
        }


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
