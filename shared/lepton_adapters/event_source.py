"""The event-source adapter: S3 notifications in, CloudEvents out to K_SINK.

Two inputs, either or both:
- an SQS queue of S3 (or MinIO/SNS/EventBridge) notifications, long-polled
  (LEPTON_SQS_QUEUE_URL, LEPTON_SQS_WAIT_SECONDS);
- MinIO webhook POSTs (LEPTON_WEBHOOK_PORT; LEPTON_WEBHOOK_TOKEN, the bearer token MinIO sends,
  required unless the webhook listens on loopback only).

Every S3 record becomes one CloudEvent (the CloudEvents AWS S3 adapter mapping, binary mode)
POSTed to K_SINK; K_CE_OVERRIDES extensions are added, as the Knative SinkBinding contract asks,
so this runs unchanged in the minio overlay's Deployment (a SinkBinding injects K_SINK), as a
ContainerSource, and in the local stack.

Delivery is at least once. An SQS message is deleted only after the sink accepted (2xx) every
record in it; otherwise it comes back after the queue's visibility timeout and, past the redrive
limit, lands in the queue's dead-letter queue. A webhook POST is answered 2xx only after
forwarding succeeded and 5xx otherwise, so MinIO retries. `s3:TestEvent` messages are
acknowledged without posting. SIGTERM/SIGINT finish the message in flight, then stop.

Run it with `python -m lepton_adapters.event_source`; it logs JSON lines to stdout.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import urllib3
from botocore.exceptions import BotoCoreError, ClientError
from cloudevents.abstract import CloudEvent
from waitress import wasyncore
from werkzeug.wrappers import Request, Response

from lepton_adapters.wsgi import json_error_server
from lepton_runtime import jsonio
from lepton_runtime.errors import BadRequestError, ConfigurationError, LeptonError
from lepton_runtime.events.auth import sink_authorization
from lepton_runtime.events.inbound import find_records
from lepton_runtime.events.outbound import binary_http, s3_object_event
from lepton_runtime.http.responses import error_payload, json_response
from lepton_runtime.logs import configure
from lepton_runtime.settings import Settings
from lepton_runtime.storage import make_sqs_client

log = logging.getLogger("lepton_adapters.event_source")

MAX_WEBHOOK_BODY_BYTES = 1024 * 1024  # S3 caps a notification at 64 KB; MinIO bodies are smaller
_SQS_BATCH = 10  # the SQS maximum per ReceiveMessage
_MAX_RECEIVE_BACKOFF = 30.0


class DeliveryError(LeptonError):
    """The sink did not accept an event (unreachable, timeout, or a non-2xx answer)."""

    code = "sink_unavailable"
    retryable = True


@dataclass(frozen=True)
class Forwarded:
    """What one notification body became: the ids of the events the sink accepted."""

    event_ids: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()


class Forwarder:
    """Converts notification bodies to CloudEvents and POSTs them to the sink (thread-safe)."""

    def __init__(
        self,
        sink: str,
        *,
        timeout: float,
        region: str = "",
        extensions: Mapping[str, str] | None = None,
        http: urllib3.PoolManager | None = None,
        token_file: Path | None = None,
    ) -> None:
        """`token_file`: the OIDC token a SinkBinding mounts for the sink (sent when present)."""
        if not sink.startswith(("http://", "https://")):
            raise ConfigurationError(f"K_SINK must be an http(s) URL, got {sink!r}")
        self.sink = sink
        self.region = region
        self.extensions = dict(extensions or {})
        self.token_file = token_file
        self._timeout = urllib3.Timeout(total=timeout)
        self._http = http or urllib3.PoolManager(maxsize=8)

    def forward(self, body: Any) -> Forwarded:
        """POST one event per S3 record in `body`; raise DeliveryError at the first refusal.

        Raises EventFormatError for a body that is no notification at all.
        """
        found = find_records(body)
        event_ids: list[str] = []
        for record in found.records:
            event = s3_object_event(record, self.region, self.extensions)
            self.post(event)
            event_ids.append(str(event["id"]))
        return Forwarded(tuple(event_ids), found.ignored)

    def post(self, event: CloudEvent) -> None:
        headers, body = binary_http(event)
        headers.update(sink_authorization(self.token_file))
        try:
            response = self._http.request(
                "POST", self.sink, body=body, headers=headers, timeout=self._timeout, retries=False
            )
        except urllib3.exceptions.HTTPError as exc:
            raise DeliveryError(f"sink {self.sink} unreachable: {exc}") from exc
        if not 200 <= response.status < 300:
            raise DeliveryError(
                f"sink {self.sink} answered {response.status} for event {event['id']}"
            )


class SqsPoller:
    """Long-polls one SQS queue and forwards its messages, deleting only what was delivered.

    Up to `concurrency` messages are in flight at once, each on a worker thread: a slow one (a
    training can hold its message for minutes) does not hold up the others, and the poller
    asks for more messages whenever a worker is free.
    """

    def __init__(
        self,
        client: Any,
        queue_url: str,
        forwarder: Forwarder,
        *,
        wait_seconds: int,
        stop: threading.Event,
        concurrency: int = 1,
    ) -> None:
        self.client = client
        self.queue_url = queue_url
        self.forwarder = forwarder
        self.wait_seconds = wait_seconds
        self.stop = stop
        self.concurrency = max(1, concurrency)
        self._in_flight = 0
        self._idle = threading.Condition()
        self._workers = ThreadPoolExecutor(self.concurrency, thread_name_prefix="forward")

    def run(self) -> None:
        """Poll until `stop` is set; receive errors are logged and retried with backoff."""
        backoff = 1.0
        try:
            while not self.stop.is_set():
                try:
                    self.poll_once()
                    backoff = 1.0
                except (BotoCoreError, ClientError) as exc:
                    log.warning(
                        "cannot receive from SQS; retrying",
                        extra={"queue_url": self.queue_url, "error": str(exc), "retry_in": backoff},
                    )
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, _MAX_RECEIVE_BACKOFF)
        finally:
            self._workers.shutdown(wait=True)  # let the messages in flight finish

    def poll_once(self) -> int:
        """One ReceiveMessage (long poll) for as many messages as there are free workers;
        they are handled in the background (see `join`)."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight < self.concurrency or self.stop.is_set())
            free = min(_SQS_BATCH, self.concurrency - self._in_flight)
        if free <= 0:
            return 0
        response = self.client.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=free,
            WaitTimeSeconds=self.wait_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        messages = response.get("Messages", [])
        for index, message in enumerate(messages):
            if self.stop.is_set():
                self._release(messages[index:])
                break
            with self._idle:
                self._in_flight += 1
            self._workers.submit(self._handle_in_worker, message)
        return len(messages)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until no message is in flight; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def _handle_in_worker(self, message: Mapping[str, Any]) -> None:
        try:
            self.handle(message)
        except Exception:  # a bug must not leak a worker or kill the pool
            log.exception("unexpected error forwarding a message")
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def handle(self, message: Mapping[str, Any]) -> bool:
        """Forward one message; delete it if every record was accepted. True if deleted."""
        fields = {
            "message_id": message.get("MessageId"),
            "receive_count": message.get("Attributes", {}).get("ApproximateReceiveCount"),
        }
        try:
            forwarded = self.forwarder.forward(jsonio.loads(message["Body"], what="the message"))
        except BadRequestError as exc:
            # Never deleted: past the redrive limit it lands in the dead-letter queue.
            log.error("message is no S3 notification", extra={**fields, "error": str(exc)})
            return False
        except DeliveryError as exc:
            log.warning(
                "sink refused; message will be redelivered", extra={**fields, "error": str(exc)}
            )
            return False
        try:
            self.client.delete_message(
                QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
            )
        except (BotoCoreError, ClientError) as exc:
            # The message comes back and is delivered again; consumers deduplicate.
            log.warning("cannot delete a delivered message", extra={**fields, "error": str(exc)})
            return False
        log.info(
            "message delivered" if forwarded.event_ids else "message acknowledged",
            extra={**fields, "event_ids": forwarded.event_ids, "ignored": forwarded.ignored},
        )
        return True

    def _release(self, messages: Sequence[Mapping[str, Any]]) -> None:
        """Make messages received during shutdown visible again at once, for another replica."""
        entries = [
            {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"], "VisibilityTimeout": 0}
            for index, message in enumerate(messages)
        ]
        try:
            self.client.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=entries)
        except (BotoCoreError, ClientError) as exc:
            log.warning("cannot release messages", extra={"error": str(exc)})


class WebhookApp:
    """WSGI app receiving MinIO webhook notifications."""

    def __init__(self, forwarder: Forwarder, token: str = "") -> None:
        self.forwarder = forwarder
        self._expected = f"Bearer {token}".encode() if token else b""

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self.respond(Request(environ))(environ, start_response)

    def respond(self, request: Request) -> Response:
        if request.method in ("HEAD", "GET"):
            # MinIO checks that the endpoint is up with a HEAD request.
            return json_response({"status": "ok"}, 200)
        if request.method != "POST":
            return json_response(error_payload("method_not_allowed", "use POST"), 405)
        if self._expected and not hmac.compare_digest(
            request.headers.get("Authorization", "").encode(), self._expected
        ):
            return json_response(
                error_payload("unauthorized", "missing or wrong bearer token"), 401
            )
        if (request.content_length or 0) > MAX_WEBHOOK_BODY_BYTES:
            return json_response(error_payload("payload_too_large", "notification too large"), 413)
        try:
            body = jsonio.loads(request.get_data(cache=False), what="the notification")
            forwarded = self.forwarder.forward(body)
        except BadRequestError as exc:
            log.error("webhook body is no S3 notification", extra={"error": str(exc)})
            return json_response(error_payload("invalid_event", str(exc)), 400)
        except DeliveryError as exc:
            log.warning("sink refused a webhook event", extra={"error": str(exc)})
            return json_response(error_payload(exc.code, str(exc)), 503)
        log.info(
            "webhook delivered" if forwarded.event_ids else "webhook acknowledged",
            extra={"event_ids": forwarded.event_ids, "ignored": forwarded.ignored},
        )
        return json_response(
            {"forwarded": list(forwarded.event_ids), "ignored": list(forwarded.ignored)}
        )


class WebhookServer:
    """A waitress server for the webhook app on its own thread."""

    def __init__(self, app: WebhookApp, host: str, port: int, threads: int = 4) -> None:
        # Waitress buffers a body (to disk past 512 KiB) before the app runs: this bounds it
        # whether it comes with a Content-Length or chunked.
        self._server = json_error_server(
            app, max_body_bytes=MAX_WEBHOOK_BODY_BYTES, host=host, port=port, threads=threads
        )
        self._thread = threading.Thread(target=self._server.run, name="webhook", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    def start(self) -> None:
        self._thread.start()

    def stop(self, grace: float) -> None:
        """Let requests in flight finish (up to `grace` seconds), then close every socket."""
        server = self._server
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=grace)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and any(
            channel.total_outbufs_len for channel in list(server.active_channels.values())
        ):
            time.sleep(0.01)  # the loop thread is still sending the last answers
        # Sockets are closed on the loop's own thread, which then finds its map empty and ends.
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map, ignore_all=True))
        self._thread.join(timeout=2.0)


class SourceAdapter:
    """The SQS poller and/or the webhook listener, run until `stop()`."""

    def __init__(
        self,
        settings: Settings,
        *,
        sqs_client: Any = None,
        webhook_host: str | None = None,
        webhook_port: int | None = None,
        http: urllib3.PoolManager | None = None,
    ) -> None:
        """`webhook_port` overrides settings.webhook_port (0 = any free port; tests)."""
        serve_webhook = webhook_port is not None or settings.webhook_port > 0
        if not settings.sink:
            raise ConfigurationError("K_SINK is not set: nowhere to send events")
        if not settings.queue_url and not serve_webhook:
            raise ConfigurationError("set LEPTON_SQS_QUEUE_URL, LEPTON_WEBHOOK_PORT or both")
        webhook_host = settings.webhook_host if webhook_host is None else webhook_host
        if serve_webhook and not settings.webhook_token and not is_loopback(webhook_host):
            raise ConfigurationError(
                f"the webhook listens on {webhook_host}, beyond loopback: set "
                "LEPTON_WEBHOOK_TOKEN (MinIO's notify_webhook auth_token) so strangers cannot "
                "post notifications, or LEPTON_WEBHOOK_HOST=127.0.0.1"
            )
        self.settings = settings
        self.crashed = False
        self._stop = threading.Event()
        if settings.queue_url and sqs_client is None:
            sqs_client = make_sqs_client(settings)
        region = sqs_client.meta.region_name if sqs_client else boto3.session.Session().region_name
        self.forwarder = Forwarder(
            settings.sink,
            timeout=settings.sink_timeout,
            region=region or "",
            extensions=dict(settings.ce_overrides),
            http=http,
            token_file=settings.sink_token_file,
        )
        self.poller = (
            SqsPoller(
                sqs_client,
                settings.queue_url,
                self.forwarder,
                wait_seconds=settings.poll_wait_seconds,
                stop=self._stop,
                concurrency=settings.source_concurrency,
            )
            if settings.queue_url
            else None
        )
        self._poll_thread = threading.Thread(target=self._poll, name="sqs-poller", daemon=True)
        self.webhook = (
            WebhookServer(
                WebhookApp(self.forwarder, settings.webhook_token),
                webhook_host,
                settings.webhook_port if webhook_port is None else webhook_port,
                threads=min(settings.threads, 8),
            )
            if serve_webhook
            else None
        )

    def start(self) -> None:
        if self.webhook:
            self.webhook.start()
        if self.poller:
            self._poll_thread.start()
        log.info(
            "event source started",
            extra={
                "sink": self.settings.sink,
                "queue_url": self.settings.queue_url or None,
                "webhook_port": self.webhook.port if self.webhook else None,
            },
        )

    def stop(self) -> None:
        """Ask every input to stop (safe from a signal handler)."""
        self._stop.set()

    def wait(self) -> None:
        """Block until `stop()`."""
        while not self._stop.wait(1.0):
            pass

    def close(self) -> None:
        """Stop, let the message in flight finish, and release the listener."""
        self._stop.set()
        if self.poller and self._poll_thread.is_alive():
            self._poll_thread.join(
                timeout=self.settings.poll_wait_seconds + self.settings.sink_timeout + 5
            )
        if self.webhook:
            self.webhook.stop(grace=self.settings.sink_timeout)
        log.info("event source stopped")

    def _poll(self) -> None:
        assert self.poller is not None
        try:
            self.poller.run()
        except Exception:  # a bug: stop the process so the platform restarts it
            log.exception("SQS poller crashed")
            self.crashed = True
            self._stop.set()


def main() -> int:
    """Entry point of `python -m lepton_adapters.event_source`: run until SIGTERM/SIGINT.

    Exit status: 0 after a signal, 1 if the poller crashed, 2 for a bad configuration.
    """
    try:
        settings = Settings.from_env()
        configure(settings.log_level)
        if settings.log_level != "DEBUG":  # botocore says "Found credentials ..." at INFO
            for name in ("botocore", "boto3", "urllib3"):
                logging.getLogger(name).setLevel(logging.WARNING)
        adapter = SourceAdapter(settings)
    except ConfigurationError as exc:
        configure("INFO")
        log.error("invalid configuration", extra={"error": str(exc)})
        return 2
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: adapter.stop())
    adapter.start()
    adapter.wait()
    adapter.close()
    return 1 if adapter.crashed else 0


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


if __name__ == "__main__":
    sys.exit(main())
