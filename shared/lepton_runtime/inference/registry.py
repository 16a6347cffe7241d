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

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lepton_model.classifier import Classifier, load_classifier
from lepton_model.errors import ArtifactError, LeptonModelError
from lepton_runtime.errors import LeptonError, ModelNotReadyError
from lepton_runtime.inference.prefetch import Prefetched
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
        self._handoff: Prefetched | None = None
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

    def adopt(self, prefetched: Prefetched) -> bool:
        """Let the first load start from what a prefetch found (inference/prefetch.py): its
        version and metadata instead of reading latest.json and metadata.json, its artifact
        verified in the cache against that metadata. Used once, by the next load only (later
        ones read latest.json again); refused for another model or another version than the
        pin."""
        pin = self._settings.model_version
        if prefetched.name != self.name or (pin and prefetched.version != pin):
            return False
        with self._load_lock:
            if self._current is not None:
                return False
            self._handoff = prefetched
        return True

    def drop_handoff(self) -> None:
        """Forget an adopted handoff not used yet: the supervisor's, once its first workers are
        forked, so a worker started later (a replacement) reads latest.json."""
        with self._load_lock:
            self._handoff = None

    def refresh(self) -> bool:
        """Load the target version if it is not the one being served; True when swapped.

        One load at a time; a caller arriving during a load waits for it, then checks again.
        """
        with self._load_lock:
            handoff, self._handoff = self._handoff, None  # one load at most, however it ends
            try:
                if handoff is not None:
                    version: str | None = handoff.version
                    raw: dict[str, Any] | None = handoff.metadata
                else:
                    version, raw = self.target_version(), None
                current = self._current
                if version is None:
                    self.last_error = f"nothing published yet for {self.name!r}"
                    return False
                if current is not None and current.version == version:
                    self.last_error = ""
                    return False
                classifier = self._load(version, raw)
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

    def _load(self, version: str, raw: dict[str, Any] | None = None) -> Classifier:
        """Load `version`: its metadata.json (`raw` when already read), the runtime's file
        fetched into the verified cache, then the classifier."""
        if raw is None:
            raw = self.store.metadata(self.name, version)
        runtime = self.cache.fetch_version(
            self.store, self.name, version, raw, self._settings.runtime
        )
        folder = self.cache.folder(self.name, version)
        classifier = self._loader(folder, runtime, self._settings.top_k)
        if classifier.version != version:
            raise ArtifactError(f"{folder} holds version {classifier.version!r}, not {version}")
        return classifier

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
