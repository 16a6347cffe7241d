"""Prometheus metrics of a function process (prometheus-client, served at /metrics)."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from lepton_runtime.settings import metrics_multiprocess_dir

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class FunctionMetrics:
    """The metric families of one function, on a registry of its own."""

    def __init__(self, function: str) -> None:
        self.function = function
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "lepton_requests",
            "Requests handled, by kind of input and outcome (HTTP status class).",
            ("function", "kind", "outcome"),
            registry=self.registry,
        )
        self._latency = Histogram(
            "lepton_request_duration_seconds",
            "Time to handle a request, by kind of input.",
            ("function", "kind"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._batch = Histogram(
            "lepton_batch_size",
            "Images per model invocation.",
            ("function",),
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        ).labels(function)
        self._model = Gauge(
            "lepton_model_info",
            "The model version being served (value 1 for the live one).",
            ("function", "name", "version", "runtime"),
            registry=self.registry,
            multiprocess_mode="livemax",  # with several workers: 1 while any serves it
        )
        self._model_labels: tuple[str, ...] | None = None
        # Children of the per-request families by (kind, status class): prometheus-client's
        # labels() validates and hashes its arguments on every call.
        self._request_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._loads = Counter(
            "lepton_model_loads",
            "Model loads, by outcome.",
            ("function", "outcome"),
            registry=self.registry,
        )
        self._events = Counter(
            "lepton_object_events",
            "Objects referenced by inbound events, by outcome.",
            ("function", "outcome"),
            registry=self.registry,
        )

    def request(self, kind: str, status: int, seconds: float) -> None:
        key = (kind, status // 100)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self._requests.labels(self.function, kind, f"{status // 100}xx"),
                self._latency.labels(self.function, kind),
            )
        counter, latency = children
        counter.inc()
        latency.observe(seconds)

    def batch(self, size: int) -> None:
        self._batch.observe(size)

    def model_loaded(self, name: str, version: str, runtime: str) -> None:
        if self._model_labels is not None:
            self._model.labels(*self._model_labels).set(0)
        self._model_labels = (self.function, name, version, runtime)
        self._model.labels(*self._model_labels).set(1)
        self._loads.labels(self.function, "ok").inc()

    def model_load_failed(self) -> None:
        self._loads.labels(self.function, "error").inc()

    def object_event(self, outcome: str, count: int = 1) -> None:
        self._events.labels(self.function, outcome).inc(count)

    def render(self) -> tuple[bytes, str]:
        """The exposition text; summed over every worker process when the server runs several
        (prometheus-client's multiprocess mode, configured by PROMETHEUS_MULTIPROC_DIR)."""
        if metrics_multiprocess_dir():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
