"""One-shot training from an event file: the Knative JobSink contract.

A JobSink runs a Kubernetes Job per event with the event mounted as JSON at
/etc/jobsink-event/event. `lepton train-job` trains exactly as the training function would,
sends the reply event to K_SINK when one is bound, and exits with a code a Job's
podFailurePolicy can act on.
"""

from __future__ import annotations

import logging
from pathlib import Path

import requests

from lepton_runtime.errors import LeptonError, is_retryable
from lepton_runtime.events.auth import sink_authorization
from lepton_runtime.events.inbound import parse_cloudevent
from lepton_runtime.events.outbound import binary_http, event_from_http
from lepton_runtime.training.service import TrainingService

log = logging.getLogger("lepton.train.job")

JOBSINK_EVENT_FILE = Path("/etc/jobsink-event/event")
EXIT_OK = 0
EXIT_RETRY = 1  # transient (storage down): let the Job retry the pod
EXIT_FAILED = 2  # permanent (bad dataset, bad event): fail the Job, do not retry


def run_job(service: TrainingService, event_file: Path = JOBSINK_EVENT_FILE) -> int:
    """Train for the event in `event_file`; the exit code says whether to retry."""
    try:
        # A structured CloudEvent, parsed within the JSON value bound (the SDK's from_json
        # parses it three times with unbounded json: a 4 MB file cost 296 MB).
        event = event_from_http(
            {"content-type": "application/cloudevents+json"},
            event_file.read_bytes(),
            service.settings.max_json_values,
        )
    except OSError as exc:
        log.error("cannot read the event file", extra={"path": str(event_file), "error": str(exc)})
        return EXIT_FAILED
    except Exception as exc:  # the SDK raises several unrelated types for bad input
        log.error("the event file is not a CloudEvent", extra={"error": str(exc)})
        return EXIT_FAILED
    try:
        outcomes = service.run_event(parse_cloudevent(event))
    except LeptonError as exc:
        log.error("training job failed", extra={"error": str(exc), "code": exc.code})
        return EXIT_RETRY if is_retryable(exc) else EXIT_FAILED
    if not outcomes:
        # The Triggers route only datasets here: an event that names none is a routing fault,
        # which must not look like a finished training.
        log.error(
            "the event names no dataset to train on",
            extra={"id": event["id"], "type": event["type"]},
        )
        return EXIT_FAILED
    for outcome in outcomes:
        _send(service, outcome)
    return EXIT_OK if all(o.ok for o in outcomes) else EXIT_FAILED


def _send(service: TrainingService, outcome) -> None:  # type: ignore[no-untyped-def]
    sink = service.settings.sink
    if not sink:
        return
    headers, body = binary_http(service.reply(outcome))
    # The SinkBinding's OIDC token for the Broker, when Knative mounted one.
    headers.update(sink_authorization(service.settings.sink_token_file))
    try:
        requests.post(
            sink, data=body, headers=headers, timeout=service.settings.sink_timeout
        ).raise_for_status()
    except requests.RequestException as exc:
        # The model is published either way; inference replicas also poll latest.json.
        log.warning("cannot send the reply event", extra={"sink": sink, "error": str(exc)})
