"""Knative Trigger and Broker objects read from knative/, and their filters evaluated.

Supports `spec.filter.attributes` (exact match) and the new `spec.filters` dialects exact,
prefix, suffix, all, any and not. When `filters` is set, `filter` is ignored (as in Knative).
CESQL is not supported by this development router and is refused when the manifests are read,
and so is a subscriber of a kind the router cannot deliver to (it delivers to Knative Services
over HTTP and runs JobSink Jobs itself): the router never silently drops what a cluster routes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import isodate
import yaml

Attributes = Mapping[str, Any]
Predicate = Callable[[Attributes], bool]


class TriggerConfigError(ValueError):
    """A manifest the development router cannot honour."""


# The subscriber kinds the development router delivers to, by (API group, kind): a Knative
# Service (or a plain Kubernetes Service) gets an HTTP POST; a JobSink gets a Job run locally.
SERVICE = "Service"
JOBSINK = "JobSink"
SUBSCRIBER_KINDS = {
    ("serving.knative.dev", "Service"): SERVICE,
    ("", "Service"): SERVICE,
    ("sinks.knative.dev", "JobSink"): JOBSINK,
}


@dataclass(frozen=True)
class Delivery:
    """Knative's DeliverySpec: retries, backoff, per-attempt timeout and dead-letter sink."""

    retry: int = 0
    backoff_policy: str = "exponential"
    backoff_delay: float = 0.2
    timeout: float | None = None
    dead_letter_sink: str | None = None

    def delay(self, retry_number: int) -> float:
        """Seconds to wait before retry `retry_number` (1-based), as Knative computes it."""
        if self.backoff_policy == "linear":
            return self.backoff_delay * retry_number
        return self.backoff_delay * (2 ** (retry_number - 1))

    def merged_over(self, default: Delivery | None) -> Delivery:
        return (
            self
            if default is None
            else Delivery(
                retry=self.retry,
                backoff_policy=self.backoff_policy,
                backoff_delay=self.backoff_delay,
                timeout=self.timeout if self.timeout is not None else default.timeout,
                dead_letter_sink=self.dead_letter_sink or default.dead_letter_sink,
            )
        )


@dataclass(frozen=True)
class Trigger:
    name: str
    broker: str
    subscriber: str  # a Service or JobSink name (ref), or an absolute URI
    matches: Predicate
    delivery: Delivery
    description: str = ""
    kind: str = SERVICE  # SERVICE or JOBSINK
    audience: str | None = None  # the OIDC audience the Broker's token is issued for


def _seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return isodate.parse_duration(value).total_seconds()
    except (isodate.ISO8601Error, ValueError) as exc:
        raise TriggerConfigError(f"invalid ISO 8601 duration {value!r}") from exc


def ref_kind(ref: Mapping[str, Any]) -> str:
    """SERVICE or JOBSINK for a destination's ref; TriggerConfigError for any other kind."""
    group = str(ref.get("apiVersion", "")).rpartition("/")[0]
    kind = str(ref.get("kind", ""))
    if "apiVersion" not in ref and kind == "Service":
        group = "serving.knative.dev"
    try:
        return SUBSCRIBER_KINDS[(group, kind)]
    except KeyError:
        raise TriggerConfigError(
            f"the development router cannot deliver to {ref.get('apiVersion', '?')} {kind} "
            f"{ref.get('name')!r}: it serves Knative Services and JobSinks only"
        ) from None


def _destination(spec: Mapping[str, Any] | None) -> str | None:
    if not spec:
        return None
    ref = spec.get("ref")
    if ref:
        ref_kind(ref)
        name = str(ref["name"])
        uri = spec.get("uri")
        return f"{name}{uri}" if uri else name
    if spec.get("uri"):
        return str(spec["uri"])
    raise TriggerConfigError(f"a destination needs ref or uri: {dict(spec)}")


def parse_delivery(spec: Mapping[str, Any] | None) -> Delivery | None:
    if not spec:
        return None
    policy = str(spec.get("backoffPolicy", "exponential"))
    if policy not in ("exponential", "linear"):
        raise TriggerConfigError(f"unknown backoffPolicy {policy!r}")
    return Delivery(
        retry=int(spec.get("retry", 0)),
        backoff_policy=policy,
        backoff_delay=_seconds(spec.get("backoffDelay")) or 0.2,
        timeout=_seconds(spec.get("timeout")),
        dead_letter_sink=_destination(spec.get("deadLetterSink")),
    )


def _attribute(attributes: Attributes, name: str) -> str | None:
    value = attributes.get(name)
    return None if value is None else str(value)


def compile_filter(expression: Mapping[str, Any]) -> Predicate:
    """One `filters` entry (a single dialect) as a predicate over CloudEvent attributes."""
    if len(expression) != 1:
        raise TriggerConfigError(f"a filter expression has exactly one dialect: {dict(expression)}")
    dialect, body = next(iter(expression.items()))
    if dialect in ("exact", "prefix", "suffix"):
        if not isinstance(body, Mapping) or not body:
            raise TriggerConfigError(f"{dialect} needs attribute: value pairs")
        tests = {
            "exact": lambda have, want: have == want,
            "prefix": lambda have, want: have.startswith(want),
            "suffix": lambda have, want: have.endswith(want),
        }[dialect]
        pairs = [(str(k), str(v)) for k, v in body.items()]
        return lambda attrs: all(
            (have := _attribute(attrs, k)) is not None and tests(have, v) for k, v in pairs
        )
    if dialect in ("all", "any"):
        if not isinstance(body, list):
            raise TriggerConfigError(f"{dialect} takes a list of filter expressions")
        parts = [compile_filter(item) for item in body]
        combine = all if dialect == "all" else any
        return lambda attrs: combine(p(attrs) for p in parts)
    if dialect == "not":
        inner = compile_filter(body)
        return lambda attrs: not inner(attrs)
    if dialect == "cesql":
        raise TriggerConfigError("CESQL filters are not supported by the development router")
    raise TriggerConfigError(f"unknown filter dialect {dialect!r}")


def trigger_predicate(spec: Mapping[str, Any]) -> Predicate:
    filters = spec.get("filters")
    if filters:
        parts = [compile_filter(item) for item in filters]
        return lambda attrs: all(p(attrs) for p in parts)
    exact = (spec.get("filter") or {}).get("attributes") or {}
    pairs = [(str(k), str(v)) for k, v in exact.items()]
    # In the legacy filter an empty value matches any value of an attribute that is present.
    return lambda attrs: all(
        (have := _attribute(attrs, k)) is not None and (v == "" or have == v) for k, v in pairs
    )


def read_manifests(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every object in the given files and folders: a folder holding a kustomization is built
    (the overlay `make deploy` applies, components included); any other folder is read
    recursively (*.yaml/*.yml)."""
    from lepton_stack.kustomize import KUSTOMIZATION_FILES, render

    documents: list[dict[str, Any]] = []
    for path in map(Path, paths):
        if path.is_dir() and any((path / name).is_file() for name in KUSTOMIZATION_FILES):
            documents.extend(render(path))
            continue
        files = sorted(path.rglob("*.y*ml")) if path.is_dir() else [path]
        for file in files:
            for doc in yaml.safe_load_all(file.read_text()):
                if isinstance(doc, dict):
                    documents.append(doc)
    return documents


def load_triggers(paths: Iterable[Path], broker: str | None = None) -> list[Trigger]:
    """The Triggers of `broker` (or of every broker) with the Broker's delivery defaults."""
    return triggers_of(read_manifests(paths), broker)


def triggers_of(documents: Iterable[Mapping[str, Any]], broker: str | None = None) -> list[Trigger]:
    """The Triggers among `documents` (objects of a build), compiled for the router."""
    documents = list(documents)
    brokers = {
        d["metadata"]["name"]: parse_delivery((d.get("spec") or {}).get("delivery"))
        for d in documents
        if d.get("kind") == "Broker"
    }
    triggers: list[Trigger] = []
    for doc in documents:
        if doc.get("kind") != "Trigger":
            continue
        spec = doc.get("spec") or {}
        if broker is not None and spec.get("broker") != broker:
            continue
        default = brokers.get(spec.get("broker"))
        own = parse_delivery(spec.get("delivery"))
        delivery = own.merged_over(default) if own else (default or Delivery())
        name = str(doc["metadata"]["name"])
        subscriber_spec = spec.get("subscriber") or {}
        try:
            subscriber = _destination(subscriber_spec)
        except TriggerConfigError as exc:
            raise TriggerConfigError(f"trigger {name}: {exc}") from exc
        if subscriber is None:
            raise TriggerConfigError(f"trigger {name} has no subscriber")
        ref = subscriber_spec.get("ref")
        triggers.append(
            Trigger(
                name=name,
                broker=str(spec.get("broker")),
                subscriber=subscriber,
                matches=trigger_predicate(spec),
                delivery=delivery,
                kind=ref_kind(ref) if ref else SERVICE,
                audience=subscriber_spec.get("audience"),
            )
        )
    return triggers
