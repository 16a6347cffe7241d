"""Many models, one inference function, as TF Serving and KServe serve many.

Every model with a `<model>/latest.json` in the models bucket can be served by name. The default
model (LEPTON_MODEL_NAME, pinned by LEPTON_MODEL_VERSION when set) is loaded at start and decides
readiness; any other is loaded on its first request (one load however many requests arrive
together) and then kept current like the default one, each by its own ModelRegistry. Loaded
models other than the default are kept within LEPTON_MAX_LOADED_MODELS and a budget of model
bytes (LEPTON_LOADED_MODEL_BYTES), the least recently used unloaded first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from lepton_model.artifacts import TFLITE_FILE
from lepton_model.classifier import Classifier
from lepton_runtime.errors import NotFoundError
from lepton_runtime.inference.registry import ModelRegistry
from lepton_runtime.metrics import FunctionMetrics
from lepton_runtime.models.store import ModelStore, valid_name
from lepton_runtime.settings import Settings

log = logging.getLogger("lepton.models")

RegistryFactory = Callable[[Settings], ModelRegistry]
# How long "is <name> published?" answers are reused (upload routing asks it per event).
_PUBLISHED_TTL_SECONDS = 10.0
_PUBLISHED_CACHE_SIZE = 4096


class ModelCatalog:
    """The models this replica serves, by name."""

    def __init__(
        self,
        settings: Settings,
        store: ModelStore,
        metrics: FunctionMetrics | None = None,
        make_registry: RegistryFactory | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self._make = make_registry or (lambda s: ModelRegistry(s, store, metrics))
        self.default = self._make(settings)
        self._others: OrderedDict[str, ModelRegistry] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._published: dict[str, tuple[float, bool]] = {}
        self._started = False

    @property
    def default_name(self) -> str:
        return self.default.name

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            self._started = True
            others = list(self._others.values())
        self.default.start()
        for registry in others:  # loaded before the start (a request that came first)
            registry.start()

    def stop(self) -> None:
        self.default.stop()
        with self._lock:
            for registry in self._others.values():
                registry.stop()

    def request_refresh(self, name: str | None = None) -> None:
        """Check the pointer of `name` now (every loaded model when None); never blocks."""
        with self._lock:
            registries = [self.default, *self._others.values()]
        for registry in registries:
            if name is None or registry.name == name:
                registry.request_refresh()

    # --- lookup -------------------------------------------------------------------------------

    def registry(self, name: str | None = None) -> ModelRegistry:
        """The registry serving `name` (the default when None), loading it on first use.
        NotFoundError when no model of that name is published."""
        if name is None or name == self.default.name:
            return self.default
        while True:
            with self._lock:
                found = self._others.get(name)
                if found is not None:
                    self._others.move_to_end(name)
                    return found
                gate = self._loading.setdefault(name, threading.Lock())
            with gate:  # one load of `name`, however many requests want it at once
                with self._lock:
                    found = self._others.get(name)
                    if found is not None:
                        return found
                    if self._loading.get(name) is not gate:
                        continue  # the load this waited for failed: one new load, as at first
                try:
                    registry = self._load(name)
                except BaseException:
                    # A name that loads nothing (none published: any name a request makes up)
                    # keeps no gate: each kept one, a request naming 30 KB cost 30 KB for good.
                    with self._lock:
                        self._loading.pop(name, None)
                    raise
                with self._lock:
                    self._others[name] = registry
                    self._loading.pop(name, None)
                    evicted = self._evict()
                    started = self._started
                break
        if started:  # else start() starts it
            registry.start()
        for old in evicted:
            old.stop()
            log.info("model unloaded", extra={"model": old.name, "reason": "least recently used"})
        return registry

    def require(self, name: str | None = None) -> Classifier:
        return self.registry(name).require()

    def loaded(self, name: str) -> bool:
        """Served from memory right now (so answering it needs no storage)."""
        if name == self.default.name:
            return self.default.current is not None
        with self._lock:
            registry = self._others.get(name)
        return registry is not None and registry.current is not None

    def published(self, name: str) -> bool:
        """Whether `name` has a live version in the models bucket (answers reused briefly)."""
        if name == self.default.name:
            return True
        if not valid_name(name):
            return False
        now = time.monotonic()
        cached = self._published.get(name)
        if cached and now - cached[0] < _PUBLISHED_TTL_SECONDS:
            return cached[1]
        answer = self.store.pointer(name) is not None
        if len(self._published) >= _PUBLISHED_CACHE_SIZE:  # names come from upload keys
            self._published.clear()
        self._published[name] = (now, answer)
        return answer

    def names(self) -> list[str]:
        """Every published model (the default first)."""
        others = [n for n in self.store.models() if n != self.default.name and self.published(n)]
        return [self.default.name, *others]

    def status(self) -> dict[str, Any]:
        with self._lock:
            others = {name: r.status() for name, r in self._others.items()}
        return {**self.default.status(), "other_models": others}

    # --- loading and unloading ------------------------------------------------------------------

    def _load(self, name: str) -> ModelRegistry:
        if not valid_name(name) or self.store.pointer(name) is None:
            raise NotFoundError(
                f"no model named {name!r} is published; served here: {', '.join(self.names())}"
            )
        # A pin applies to the default model only; the others follow their latest.json.
        registry = self._make(replace(self.settings, model_name=name, model_version=""))
        registry.refresh()  # raises what the load meets: the first request gets the reason
        return registry

    def _evict(self) -> list[ModelRegistry]:
        """Unload least recently used models past the count and byte budgets (lock held)."""
        evicted = []
        while self._others and (
            len(self._others) > self.settings.max_loaded_models
            or sum(_size(r) for r in self._others.values()) > self.settings.loaded_model_bytes
        ):
            if len(self._others) == 1:
                break  # the one just asked for stays, whatever its size
            _, oldest = self._others.popitem(last=False)
            evicted.append(oldest)
        return evicted


def _size(registry: ModelRegistry) -> int:
    """Bytes a loaded model holds, as its artifact's recorded size."""
    current = registry.current
    if current is None:
        return 0
    artifacts = current.metadata.artifacts
    entry = artifacts.get(TFLITE_FILE) or next(iter(artifacts.values()), {})
    return int(entry.get("size", 0)) if isinstance(entry, dict) else 0
