"""The development router: a Knative Broker stand-in for one machine.

NOT a production broker. It keeps nothing durable of its own: an event is accepted (2xx) only
after every matching Trigger's subscriber took it or it was dead-lettered, so until then the
event stays in the SQS queue upstream. It reads the Trigger and Broker objects of the overlay a
user deploys (filters, retries, backoff, timeouts, dead-letter sinks), delivers in binary mode
over HTTP to Services and hands events to JobSinks (a local Job per event, `jobs.JobRunner`),
and routes replies back through the Triggers, as Knative does. With a signer, every delivery
carries `Authorization: Bearer <JWT>` for the subscriber's audience, as a Broker does with
Knative's OIDC feature on. Dead letters are written as JSON files a person can read.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from cloudevents.conversion import to_json
from cloudevents.http import CloudEvent
from werkzeug.wrappers import Request, Response

from lepton_runtime.errors import UnauthorizedError
from lepton_runtime.events.auth import EventAuthenticator
from lepton_runtime.events.outbound import binary_http, event_from_http
from lepton_runtime.http.responses import error_body
from lepton_stack.jobs import JobRunner
from lepton_stack.triggers import JOBSINK, Trigger, TriggerConfigError

log = logging.getLogger("lepton.router")

RETRYABLE_STATUSES = frozenset({404, 408, 409, 429})
DEAD_LETTER_DIR_SCHEME = "dir:"


@dataclass
class DeliveryResult:
    trigger: str
    status: int | None
    attempts: int
    dead_lettered: bool = False
    error: str = ""
    reply: CloudEvent | None = None


@dataclass
class RouterStats:
    received: int = 0
    delivered: Counter = field(default_factory=Counter)
    retries: Counter = field(default_factory=Counter)
    dead_letters: Counter = field(default_factory=Counter)
    replies: int = 0
    in_flight: int = 0


class Router:
    """Matches events to Triggers and delivers them with the Triggers' delivery policies."""

    def __init__(
        self,
        triggers: list[Trigger],
        subscribers: Mapping[str, str],
        reply_workers: int = 4,
        *,
        jobs: JobRunner | None = None,
        sign: Callable[[str], str] | None = None,
        jwks: Mapping[str, Any] | None = None,
        ingress_auth: EventAuthenticator | None = None,
    ) -> None:
        """`jobs` runs the JobSinks' Jobs; `sign(audience)` makes a delivery's bearer token;
        `jwks` is the signer's public key set, served at /openid/v1/jwks; `ingress_auth`
        verifies the token of every event posted to the router, as a Broker's ingress does."""
        for trigger in triggers:
            if trigger.kind == JOBSINK and (
                jobs is None or trigger.subscriber not in jobs.templates
            ):
                raise TriggerConfigError(
                    f"trigger {trigger.name} subscribes the JobSink {trigger.subscriber}, "
                    "which the router has no Job template for"
                )
        self.triggers = triggers
        self.subscribers = dict(subscribers)
        self.jobs = jobs
        self.sign = sign
        self.jwks = dict(jwks or {})
        self.ingress_auth = ingress_auth
        self.stats = RouterStats()
        self._lock = threading.Lock()
        self._session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=64)
        self._session.mount("http://", adapter)
        self._replies = ThreadPoolExecutor(reply_workers, thread_name_prefix="reply")
        self._stopping = threading.Event()

    def resolve(self, destination: str) -> str:
        """A Trigger destination (Service name, name + path, or URI) as a local URL."""
        if "://" in destination or destination.startswith(DEAD_LETTER_DIR_SCHEME):
            return destination
        name, slash, path = destination.partition("/")
        if name not in self.subscribers:
            raise KeyError(f"no local address for subscriber {name!r}")
        base = self.subscribers[name]
        return base.rstrip("/") + (slash + path if slash else "/") if "://" in base else base

    def check_addresses(self) -> None:
        """TriggerConfigError unless every Service subscriber and dead-letter sink of the
        Triggers has a local address (the stack serves it): found at start-up, not per event."""
        for trigger in self.triggers:
            destinations = [trigger.delivery.dead_letter_sink]
            if trigger.kind != JOBSINK:
                destinations.append(trigger.subscriber)
            for destination in filter(None, destinations):
                try:
                    self.resolve(destination)
                except KeyError as exc:
                    raise TriggerConfigError(
                        f"trigger {trigger.name}: the local stack has {exc.args[0]}"
                    ) from None

    def route(self, event: CloudEvent) -> list[DeliveryResult]:
        """Deliver `event` to every matching Trigger (in parallel); replies are routed after."""
        attributes = event.get_attributes()
        matching = [t for t in self.triggers if t.matches(attributes)]
        with self._lock:
            self.stats.received += 1
            self.stats.in_flight += 1
        try:
            if len(matching) <= 1:
                results = [self.deliver(t, event) for t in matching]
            else:
                with ThreadPoolExecutor(len(matching)) as pool:
                    results = list(pool.map(lambda t: self.deliver(t, event), matching))
        finally:
            with self._lock:
                self.stats.in_flight -= 1
        for result in results:
            if result.reply is not None and not self._stopping.is_set():
                with self._lock:
                    self.stats.replies += 1
                self._replies.submit(self.route, result.reply).add_done_callback(_reply_failed)
        return results

    def deliver(self, trigger: Trigger, event: CloudEvent) -> DeliveryResult:
        """One Trigger's delivery: attempts with backoff, then the dead-letter sink."""
        if trigger.kind == JOBSINK:
            return self._hand_to_jobsink(trigger, event)
        url = self.resolve(trigger.subscriber)
        delivery = trigger.delivery
        headers, body = binary_http(event)
        headers["Prefer"] = "reply"  # the data plane contract: Brokers announce reply support
        if trigger.audience and self.sign is not None:
            headers["Authorization"] = f"Bearer {self.sign(trigger.audience)}"
        status: int | None = None
        error = ""
        attempts = 0
        for attempt in range(delivery.retry + 1):
            if attempt:
                with self._lock:
                    self.stats.retries[trigger.name] += 1
                if self._stopping.wait(delivery.delay(attempt)):
                    break
            attempts += 1
            try:
                response = self._session.post(
                    url, data=body, headers=headers, timeout=delivery.timeout or 600
                )
                status = response.status_code
            except requests.RequestException as exc:
                status, error = None, f"{type(exc).__name__}: {exc}"
                continue
            if 200 <= status < 300:
                with self._lock:
                    self.stats.delivered[trigger.name] += 1
                # Only a 200 may carry a reply; a 202 is never processed as one (data plane).
                reply = _reply(response) if status == 200 else None
                return DeliveryResult(trigger.name, status, attempts, reply=reply)
            error = response.text[:2000]
            if status < 500 and status not in RETRYABLE_STATUSES:
                break  # Knative does not retry other 4xx
        log.warning(
            "delivery failed",
            extra={
                "trigger": trigger.name,
                "status": status,
                "attempts": attempts,
                "id": event["id"],
                "error": error[:300],
            },
        )
        self._dead_letter(trigger, event, url, status, error)
        return DeliveryResult(trigger.name, status, attempts, dead_lettered=True, error=error)

    def _hand_to_jobsink(self, trigger: Trigger, event: CloudEvent) -> DeliveryResult:
        """A JobSink answers 202 once the Job exists; the Job's own retries follow from there."""
        assert self.jobs is not None  # checked in __init__
        try:
            job = self.jobs.submit(trigger.subscriber, event)
        except OSError as exc:
            error = f"cannot create the Job: {exc}"
            log.warning("delivery failed", extra={"trigger": trigger.name, "error": error})
            self._dead_letter(trigger, event, f"jobsink:{trigger.subscriber}", None, error)
            return DeliveryResult(trigger.name, None, 1, dead_lettered=True, error=error)
        with self._lock:
            self.stats.delivered[trigger.name] += 1
        log.info("job created", extra={"trigger": trigger.name, "job": job, "id": event["id"]})
        return DeliveryResult(trigger.name, 202, 1)

    def _dead_letter(
        self, trigger: Trigger, event: CloudEvent, url: str, status: int | None, error: str
    ) -> None:
        sink = trigger.delivery.dead_letter_sink
        with self._lock:
            self.stats.dead_letters[trigger.name] += 1
        if not sink:
            log.error(
                "event dropped: no dead-letter sink",
                extra={"trigger": trigger.name, "id": event["id"]},
            )
            return
        # The extensions Knative adds to dead-lettered events.
        lettered = CloudEvent(
            {
                **event.get_attributes(),
                "knativeerrordest": url,
                "knativeerrorcode": str(status or 0),
                "knativeerrordata": base64.b64encode(error.encode()[:1024]).decode(),
            },
            event.get_data(),
        )
        target = self.resolve(sink)
        if target.startswith(DEAD_LETTER_DIR_SCHEME):
            folder = Path(target[len(DEAD_LETTER_DIR_SCHEME) :])
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{time.strftime('%Y%m%dT%H%M%S')}-{trigger.name}-{uuid.uuid4().hex[:8]}.json"
            # Structured JSON: binary data is kept as data_base64, not as a bytes repr.
            record = {"trigger": trigger.name, "event": json.loads(to_json(lettered))}
            (folder / name).write_text(json.dumps(record, indent=2))
            return
        headers, body = binary_http(lettered)
        self._session.post(target, data=body, headers=headers, timeout=30).raise_for_status()

    def stop(self) -> None:
        self._stopping.set()
        self._replies.shutdown(wait=False, cancel_futures=True)
        if self.jobs is not None:
            self.jobs.stop()

    # --- HTTP ingress (WSGI) ------------------------------------------------------------------

    def __call__(self, environ: dict, start_response: Any) -> Any:
        request = Request(environ)
        response = self._handle(request)
        return response(environ, start_response)

    def _handle(self, request: Request) -> Response:
        if request.method in ("GET", "HEAD") and request.path in ("/health", "/healthz"):
            return Response("ok")
        if request.method == "GET" and request.path == "/status":
            return Response(json.dumps(self.status()), mimetype="application/json")
        if request.method == "GET" and request.path == "/openid/v1/jwks" and self.jwks:
            return Response(json.dumps(self.jwks), mimetype="application/json")
        if request.method != "POST":
            return Response(status=405)
        if self.ingress_auth is not None:
            try:
                self.ingress_auth.verify(request.headers)
            except UnauthorizedError as exc:
                return Response(
                    json.dumps(error_body(exc)),
                    status=401,
                    mimetype="application/json",
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
        try:
            event = event_from_http(request.headers, request.get_data())
        except Exception as exc:  # the SDK raises several unrelated types for bad input
            return Response(
                json.dumps({"error": f"not a CloudEvent: {exc}"}),
                status=400,
                mimetype="application/json",
            )
        try:
            results = self.route(event)
        except KeyError as exc:
            return Response(
                json.dumps({"error": str(exc)}), status=500, mimetype="application/json"
            )
        except OSError as exc:  # the dead-letter sink failed: let the sender redeliver
            return Response(
                json.dumps({"error": f"dead-letter sink failed: {exc}"}),
                status=503,
                mimetype="application/json",
            )
        body = [
            {
                "trigger": r.trigger,
                "status": r.status,
                "attempts": r.attempts,
                "dead_lettered": r.dead_lettered,
            }
            for r in results
        ]
        return Response(json.dumps({"deliveries": body}), status=202, mimetype="application/json")

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "received": self.stats.received,
                "in_flight": self.stats.in_flight,
                "replies": self.stats.replies,
                "delivered": dict(self.stats.delivered),
                "retries": dict(self.stats.retries),
                "dead_letters": dict(self.stats.dead_letters),
                "triggers": [
                    {
                        "name": t.name,
                        "subscriber": t.subscriber,
                        "kind": t.kind,
                        "retry": t.delivery.retry,
                    }
                    for t in self.triggers
                ],
                "jobs": self.jobs.status() if self.jobs is not None else {},
            }


def _reply_failed(future: Future) -> None:
    """Reply routing runs in the background: an error there would otherwise vanish."""
    if not future.cancelled() and future.exception() is not None:
        log.error("reply routing failed", extra={"error": repr(future.exception())})


def _reply(response: requests.Response) -> CloudEvent | None:
    """The reply event in a subscriber's response, if it holds one (binary or structured)."""
    if not response.content and "ce-id" not in response.headers:
        return None
    try:
        return event_from_http(response.headers, response.content)
    except Exception:  # not a CloudEvent: Knative ignores a plain response body
        return None
