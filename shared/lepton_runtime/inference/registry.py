"""The live model of the inference function: loaded from the models bucket, swapped atomically.

`<model>/latest.json` names the live version; its files are cached on local disk under
`<cache>/<model>/<version>/`. A new version is loaded beside the old one and then swapped in
with one reference assignment, so a request sees either the old model or the new one, whole.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from lepton_model.artifacts import KERAS_FILE, METADATA_FILE, TFLITE_FILE
from lepton_model.classifier import Classifier, load_classifier
from lepton_model.errors import ArtifactError, LeptonModelError
from lepton_model.predictors import litert_available
from lepton_runtime.errors import LeptonError, ModelNotReadyError, StorageError
from lepton_runtime.metrics import FunctionMetrics
from lepton_runtime.settings import Settings
from lepton_runtime.storage import Storage

log = logging.getLogger("lepton.models")

POINTER_FILE = "latest.json"
_VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MAX_POINTER_BYTES = 64 * 1024
_MAX_ARTIFACT_BYTES = 512 * 1024 * 1024

Loader = Callable[[Path, str, int], Classifier]


def pointer_key(settings: Settings, name: str) -> str:
    return settings.models.key(f"{name}/{POINTER_FILE}")


def version_key(settings: Settings, name: str, version: str, filename: str) -> str:
    return settings.models.key(f"{name}/{version}/{filename}")


def valid_version(version: str) -> bool:
    return bool(_VERSION_PATTERN.match(version))


class ModelRegistry:
    """Holds the classifier being served and keeps it current."""

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        metrics: FunctionMetrics | None = None,
        loader: Loader | None = None,
    ) -> None:
        self._settings = settings
        self._storage = storage
        self._metrics = metrics
        self._loader: Loader = loader or load_classifier  # type: ignore[assignment]
        self._current: Classifier | None = None
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str = ""

    @property
    def current(self) -> Classifier | None:
        return self._current

    def require(self) -> Classifier:
        classifier = self._current
        if classifier is None:
            detail = f" ({self.last_error})" if self.last_error else ""
            raise ModelNotReadyError(
                f"no model is loaded yet for {self._settings.model_name!r}{detail}"
            )
        return classifier

    def target_version(self) -> str | None:
        """The version that should be live: the pin, or what latest.json names (None if none)."""
        if self._settings.model_version:
            return self._settings.model_version
        pointer = self._storage.get_json(
            self._settings.models.bucket,
            pointer_key(self._settings, self._settings.model_name),
            _MAX_POINTER_BYTES,
            missing_ok=True,
        )
        if pointer is None:
            return None
        version = str(pointer.get("version", "")) if isinstance(pointer, dict) else ""
        if not valid_version(version):
            raise ModelNotReadyError(f"{POINTER_FILE} names an invalid version {version!r}")
        return version

    def refresh(self) -> bool:
        """Load the target version if it is not the one being served; True when swapped.

        Concurrent callers do not queue up behind a load in progress: they return False.
        """
        if not self._load_lock.acquire(blocking=False):
            return False
        try:
            version = self.target_version()
            current = self._current
            if version is None or (current is not None and current.version == version):
                return False
            classifier = self._load(version)
            self._current = classifier
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
            return True
        except (LeptonError, LeptonModelError, OSError) as exc:
            self.last_error = str(exc)
            if self._metrics:
                self._metrics.model_load_failed()
            raise
        finally:
            self._load_lock.release()

    def _load(self, version: str) -> Classifier:
        directory = self._fetch(version)
        classifier = self._loader(directory, self._settings.runtime, self._settings.top_k)
        if classifier.version != version:
            raise ArtifactError(
                f"{self._settings.model_name}/{version}/metadata.json names version "
                f"{classifier.version!r}: the version was published incompletely or by hand"
            )
        return classifier

    def _fetch(self, version: str) -> Path:
        """Download a version's files into the local cache (once) and return its folder."""
        name = self._settings.model_name
        target = self._settings.model_cache_dir / name / version
        if (target / METADATA_FILE).exists():
            return target
        want_tflite = self._settings.runtime != "tensorflow" and litert_available()
        files = [METADATA_FILE, TFLITE_FILE] if want_tflite else [METADATA_FILE, KERAS_FILE]
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
        try:
            for filename in files:
                try:
                    obj = self._storage.get_bytes(
                        self._settings.models.bucket,
                        version_key(self._settings, name, version, filename),
                        _MAX_ARTIFACT_BYTES,
                    )
                except StorageError:
                    if filename == TFLITE_FILE:  # fall back to the Keras file
                        files.append(KERAS_FILE)
                        continue
                    raise
                (staging / filename).write_bytes(obj.data)
            json.loads((staging / METADATA_FILE).read_text())  # fail early on a corrupt file
            try:
                staging.rename(target)
            except OSError:  # another process cached it first
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    def start(self) -> None:
        """Load in the background now, then check latest.json every poll interval."""
        self._thread = threading.Thread(target=self._run, name="model-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        delay = 0.2
        while not self._stop.is_set():
            try:
                self.refresh()
                loaded = self._current is not None
            except (LeptonError, LeptonModelError, OSError, ValueError) as exc:
                log.warning("model load failed", extra={"error": str(exc)})
                loaded = False
            if loaded:
                interval = self._settings.model_poll_seconds
                if interval <= 0:
                    return
                delay = interval
            else:
                delay = min(max(delay * 2, 0.2), 5.0)  # not loaded yet: retry soon
            self._stop.wait(delay)

    def wait_loaded(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._current is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return self._current is not None
