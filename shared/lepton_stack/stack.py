"""`lepton up`: the whole pipeline on one machine.

moto server (S3 + SQS on 127.0.0.1) -> buckets and bucket notifications to an SQS queue with a
dead-letter queue -> the event-source adapter -> the development router (the Broker, Triggers
and JobSinks of the overlay `make deploy` applies, built with its components) -> the inference
and training functions as real servers, and JobSink Jobs as local processes. Deliveries carry
OIDC tokens of a per-stack issuer, which the functions verify. The first model is trained from
the bundled digits through the real path: the archive is uploaded, the training function
publishes, the inference function loads it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import requests
from botocore.config import Config

from lepton_stack.oidc import LocalIssuer, write_private
from lepton_stack.persistence import BucketMirror
from lepton_stack.state import (
    ACCESS_KEY,
    AUDIENCES,
    BROKER_AUDIENCE,
    REGION,
    SECRET_KEY,
    StackLayout,
    StackLock,
    write_state,
)
from lepton_stack.supervisor import Part, Supervisor

log = logging.getLogger("lepton.stack")

DLQ_MAX_RECEIVES = 5
# How long the hand-held token in stack.json's event_headers lasts (the key dies with the stack).
EVENT_HEADER_TOKEN_SECONDS = 7 * 24 * 3600


class StackError(RuntimeError):
    """The stack cannot start (a port is taken, a part fails, the first model never arrives)."""


def repo_root() -> Path:
    """The checkout this package runs from (editable install), where knative/ and functions/
    live."""
    return Path(__file__).resolve().parents[2]


def aws_client(layout: StackLayout, service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=layout.s3_endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"mode": "standard"},
            connect_timeout=2,
            read_timeout=30,
        ),
    )


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def create_buckets(layout: StackLayout) -> None:
    s3 = aws_client(layout, "s3")
    for bucket in (layout.uploads, layout.results, layout.models):
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=bucket)


def provision(layout: StackLayout) -> dict[str, str]:
    """Buckets, the notification queue with its dead-letter queue, and the notifications."""
    s3 = aws_client(layout, "s3")
    sqs = aws_client(layout, "sqs")
    create_buckets(layout)
    dlq_url = sqs.create_queue(QueueName=f"{layout.queue}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    queue_url = sqs.create_queue(
        QueueName=layout.queue,
        Attributes={
            # A training can hold a message for minutes before the router answers.
            "VisibilityTimeout": "1800",
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(DLQ_MAX_RECEIVES)}
            ),
        },
    )["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    rules = [
        {
            "Id": f"lepton-{prefix.rstrip('/')}",
            "QueueArn": queue_arn,
            "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}},
        }
        for prefix in ("images/", "datasets/")
    ]
    s3.put_bucket_notification_configuration(
        Bucket=layout.uploads, NotificationConfiguration={"QueueConfigurations": rules}
    )
    return {"queue_url": queue_url, "dlq_url": dlq_url}


def write_samples(layout: StackLayout, count: int = 10) -> list[Path]:
    """A few digit PNGs (one per class) for the ready message's examples."""
    import numpy as np

    from lepton_model.digits import load_digits, render_digit

    images, labels = load_digits()
    layout.samples.mkdir(parents=True, exist_ok=True)
    paths = []
    for label in range(count):
        index = int(np.flatnonzero(labels == label)[-1])
        path = layout.samples / f"digit-{label}.png"
        render_digit(images[index], 28).save(path)
        paths.append(path)
    return paths


def bundled_dataset_archive() -> bytes:
    import zipfile

    from lepton_model.digits import digit_files

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in digit_files():
            archive.writestr(name, data)
    return buffer.getvalue()


class LocalStack:
    """Starts, supervises and stops the parts; `run()` blocks until a signal."""

    def __init__(
        self, layout: StackLayout, manifests: Path | None = None, functions: Path | None = None
    ) -> None:
        self.layout = layout
        self.manifests = manifests or repo_root() / "knative" / "overlays" / layout.overlay
        self.functions = functions or repo_root() / "functions"
        self.event_headers: dict[str, str] = {}
        self.supervisor: Supervisor | None = None
        self.queues: dict[str, str] = {}
        self.model_version: str | None = None
        self.model_accuracy: float | None = None
        self.status = "starting"
        self.lock = StackLock(layout)
        self.mirror = BucketMirror(
            aws_client(layout, "s3"),
            layout.buckets,
            [layout.uploads, layout.results, layout.models],
        )
        self._stopping = threading.Event()
        self._keeper: threading.Thread | None = None

    # --- parts --------------------------------------------------------------------------------

    def _parts(self) -> list[Part]:
        layout, python = self.layout, sys.executable
        logs = layout.logs
        ports = layout.ports
        router_cmd = [
            python,
            "-m",
            "lepton_stack.router_main",
            "--host",
            layout.host,
            "--port",
            str(ports.router),
            "--manifests",
            str(self.manifests),
            "--subscriber",
            f"lepton-infer={layout.url(ports.infer)}",
            "--subscriber",
            f"lepton-train={layout.url(ports.train)}",
            "--subscriber",
            f"lepton-dead-letters=dir:{layout.dead_letters}",
            "--jobs-dir",
            str(layout.jobs),
            "--logs-dir",
            str(logs),
            "--job-env",
            str(self._write_job_env()),
            "--issuer-dir",
            str(layout.oidc),
            "--ingress-audience",
            BROKER_AUDIENCE,
        ]

        def serve(role: str) -> Part:
            return Part(
                role,
                [
                    python,
                    "-m",
                    "lepton_stack.cli",
                    "serve",
                    role,
                    "--function-dir",
                    str(self.functions / role),
                ],
                layout.function_env(role),
                f"{layout.url(getattr(ports, role))}/health/liveness",
                logs / f"{role}.log",
            )

        return [
            serve("infer"),
            serve("train"),
            Part(
                "router", router_cmd, {}, f"{layout.url(ports.router)}/health", logs / "router.log"
            ),
            Part(
                "source",
                [python, "-m", "lepton_adapters.event_source"],
                layout.function_env("source", self.queues["queue_url"]),
                None,
                logs / "source.log",
            ),
        ]

    def _write_job_env(self) -> Path:
        """The environment of JobSink Job pods: the training function's, without a port."""
        env = self.layout.function_env("train")
        for name in ("PORT", "LEPTON_OIDC_AUDIENCE", "LEPTON_OIDC_ISSUER", "LEPTON_OIDC_JWKS"):
            env.pop(name, None)
        path = self.layout.jobs / "env.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(env, indent=2))
        return path

    def _make_issuer(self) -> None:
        """A new signing key for this stack, and the header that authorizes a hand-sent event
        at both functions."""
        issuer = LocalIssuer.create(self.layout.oidc, self.layout.issuer)
        audiences = [BROKER_AUDIENCE, *sorted(AUDIENCES.values())]
        token = issuer.token(audiences, EVENT_HEADER_TOKEN_SECONDS, "lepton-local-user")
        self.event_headers = {"Authorization": f"Bearer {token}"}
        # What the SinkBindings' OIDC volume holds on a cluster: the senders' token for the
        # Broker (the router), for the event-source adapter and the training Jobs.
        sink = issuer.token(BROKER_AUDIENCE, EVENT_HEADER_TOKEN_SECONDS, "lepton-local-source")
        write_private(self.layout.sink_token, sink)

    def _moto(self) -> Part:
        return Part(
            "s3",
            [
                sys.executable,
                "-m",
                "moto.server",
                "-H",
                self.layout.host,
                "-p",
                str(self.layout.ports.s3),
            ],
            {},
            f"{self.layout.s3_endpoint}/moto-api/",
            self.layout.logs / "s3.log",
            restart=False,  # its state is in memory: a restart would lose every object
        )

    # --- lifecycle ----------------------------------------------------------------------------

    def check_free(self) -> None:
        """Own this state dir (StackRunningError when another stack does), then check ports."""
        if not self.lock.held:
            self.lock.acquire()
        ports = self.layout.ports
        for name in ("s3", "router", "infer", "train", "webhook"):
            port = getattr(ports, name)
            if not _port_free(self.layout.host, port):
                raise StackError(f"port {port} ({name}) is in use on {self.layout.host}")

    def start(self, progress=print) -> None:  # type: ignore[no-untyped-def]
        """Start every part and wait until a model is live."""
        self.check_free()
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        self.layout.dead_letters.mkdir(parents=True, exist_ok=True)
        # Jobs of an earlier stack are gone, as on a fresh cluster (a Job's name comes from its
        # event's id, and an existing Job means "already handed over").
        shutil.rmtree(self.layout.jobs, ignore_errors=True)
        self._make_issuer()
        self._save()
        moto = self._moto()
        moto.start()
        self.supervisor = Supervisor([moto], on_change=self._save)
        moto.wait_healthy(30)
        progress(f"S3 + SQS endpoint (moto) on {self.layout.s3_endpoint}")
        create_buckets(self.layout)
        # Before any notification exists: nothing restored starts new work.
        restored = self.mirror.restore()
        if restored:
            progress(f"restored {restored} objects kept in {self.layout.buckets}")
        self.queues = provision(self.layout)
        progress(
            f"buckets {self.layout.uploads}, {self.layout.results}, {self.layout.models} "
            f"(kept in {self.layout.buckets}); notifications -> SQS (with a dead-letter queue)"
        )
        self._keeper = threading.Thread(target=self._keep_buckets, name="keeper", daemon=True)
        self._keeper.start()
        parts = self._parts()
        for part in parts:
            part.start()
            self.supervisor.parts.append(part)  # stopped by shutdown() from now on
        self._save()
        for part in parts:
            part.wait_healthy(60)
        progress("functions, router and event source are up")
        self.model_version = self._first_model(progress)
        with contextlib.suppress(Exception):  # the banner's figure only
            metrics = model_store(self.layout).metadata(self.layout.model, self.model_version)
            self.model_accuracy = metrics["metrics"].get("test_accuracy")
        self.status = "ready"
        self._save()

    def _first_model(self, progress, timeout: float = 600) -> str:  # type: ignore[no-untyped-def]
        """The live version of the default model; trained first from the bundled digits when
        there is none (the progress of that training is told as it goes)."""
        s3 = aws_client(self.layout, "s3")
        store = model_store(self.layout)
        source = f"s3://{self.layout.uploads}/datasets/{self.layout.model}.zip"
        training = store.pointer(self.layout.model) is None
        if training:
            progress(f"training the first model from the bundled digits ({source}) ...")
            s3.put_object(
                Bucket=self.layout.uploads,
                Key=f"datasets/{self.layout.model}.zip",
                Body=bundled_dataset_archive(),
                ContentType="application/zip",
            )
        deadline = time.monotonic() + timeout
        url = f"{self.layout.url(self.layout.ports.infer)}/v1/models/{self.layout.model}"
        told = 0.0
        while time.monotonic() < deadline:
            try:
                response = requests.get(url, timeout=2)
                if response.status_code == 200:
                    return str(response.json()["model_version_status"][0]["version"])
            except requests.RequestException:
                pass
            if training and time.monotonic() - told > 2.0:
                status = store.read_status(self.layout.model, source)
                if status and status.get("stage") == "training" and status.get("epochs"):
                    progress(training_progress(status))
                    told = time.monotonic()
            time.sleep(0.5)
        raise StackError(f"no model went live in {timeout:.0f} s; see {self.layout.logs}")

    def _keep_buckets(self, interval: float = 10.0) -> None:
        """Mirror the buckets to disk every `interval` seconds while the stack runs."""
        while not self._stopping.wait(interval):
            try:
                self.mirror.save()
            except Exception as exc:  # moto restarting, a disk error: next time
                log.warning("buckets not kept this time", extra={"error": str(exc)})

    def state(self) -> dict[str, Any]:
        layout, ports = self.layout, self.layout.ports
        parts = self.supervisor.parts if self.supervisor else []
        return {
            "status": self.status,
            "pid": os.getpid(),
            "s3_endpoint": layout.s3_endpoint,
            "region": REGION,
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "model": layout.model,
            "model_version": self.model_version,
            "model_test_accuracy": self.model_accuracy,
            "buckets": {
                "uploads": layout.uploads,
                "results": layout.results,
                "models": layout.models,
            },
            "functions": {"infer": layout.url(ports.infer), "train": layout.url(ports.train)},
            # What an event sent by hand needs at either function (a token of this stack's
            # issuer, for both audiences).
            "event_headers": self.event_headers,
            "overlay": layout.overlay,
            "router": layout.url(ports.router),
            "webhook": layout.url(ports.webhook),
            "queues": self.queues,
            "dead_letters": str(layout.dead_letters),
            "logs": str(layout.logs),
            "parts": {
                p.name: {"pid": p.pid, "restarts": p.restarts, "log": str(p.log_file)}
                for p in parts
            },
        }

    def _save(self) -> None:
        if not self.lock.held:
            return  # only the stack that owns the state dir writes its state
        write_state(self.layout, self.state())

    def run(self) -> None:
        """Supervise until SIGTERM/SIGINT/SIGHUP (`lepton down`, Ctrl-C, the terminal closed),
        then stop everything."""
        assert self.supervisor is not None
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda *_: self.supervisor.stop())  # type: ignore[union-attr]
        self.supervisor.watch()

    def shutdown(self) -> None:
        """Stop every part, keep the buckets on disk once more (after the functions stopped,
        before the S3 endpoint does), write the stopped state, give up the state dir."""
        if not self.lock.held:
            return  # another stack's: leave it alone
        self.status = "stopping"
        self.event_headers = {}  # the token dies with the stack
        self._stopping.set()
        if self._keeper is not None:
            self._keeper.join(timeout=30)
        if self.supervisor:
            self._save()
            self.supervisor.stop()
            endpoint = [p for p in self.supervisor.parts if p.name == "s3"]
            for part in reversed(self.supervisor.parts):
                if part.name != "s3":
                    part.stop()
            if endpoint and endpoint[0].alive():
                try:
                    report = self.mirror.save()
                    log.info("buckets kept", extra={"written": report.written})
                except Exception as exc:
                    log.error("buckets not kept on stop", extra={"error": str(exc)})
            for part in endpoint:
                part.stop()
        self.status = "stopped"
        state = self.state()
        state["pid"] = None
        write_state(self.layout, state)
        self.lock.release()


def training_progress(status: dict[str, Any]) -> str:
    """One line on a training in progress: epoch of epochs, validation accuracy, time left."""
    epoch, epochs = int(status.get("epoch") or 0), int(status["epochs"])
    elapsed = max(0.0, float(status.get("updated", 0)) - float(status.get("started", 0)))
    left = f", about {elapsed / epoch * (epochs - epoch):.0f} s left at most" if epoch else ""
    accuracy = (status.get("metrics") or {}).get("val_accuracy")
    shown = f", validation accuracy {accuracy:.1%}" if accuracy is not None else ""
    return f"training {status.get('model')}: epoch {epoch}/{epochs}{shown}{left}"


def model_store(layout: StackLayout) -> Any:
    """The stack's models bucket through the one module that knows its layout."""
    from lepton_runtime.models.store import ModelStore
    from lepton_runtime.settings import Location
    from lepton_runtime.storage import Storage

    return ModelStore(Storage(aws_client(layout, "s3")), Location(layout.models))


def ready_message(
    layout: StackLayout,
    version: str | None,
    test_accuracy: float | None = None,
    detached: bool = False,
) -> str:
    ports, s3 = layout.ports, layout.s3_endpoint
    creds = f"AWS_ACCESS_KEY_ID={ACCESS_KEY} AWS_SECRET_ACCESS_KEY={SECRET_KEY} AWS_REGION={REGION}"
    sample = layout.samples / "digit-3.png"
    rel = os.path.relpath(sample) if sample.is_absolute() else str(sample)
    accuracy = f" (test accuracy {test_accuracy:.1%})" if test_accuracy is not None else ""
    stop = (
        "`.venv/bin/lepton down` (it runs in the background)"
        if detached
        else "Ctrl-C here (or `.venv/bin/lepton down` from another terminal)"
    )
    return f"""
Lepton functions is running: model {layout.model!r} version {version} is live{accuracy}.
Models, results and datasets are kept in {layout.buckets}/ (`lepton reset` starts clean).

  S3 + SQS endpoint  {s3}   (region {REGION}, keys {ACCESS_KEY}/{SECRET_KEY})
  infer function     {layout.url(ports.infer)}
  train function     {layout.url(ports.train)}
  router (broker)    {layout.url(ports.router)}/status   dead letters in {layout.dead_letters}
  logs               {layout.logs}/

Drop an image in the bucket, read its result:
  {creds} .venv/bin/aws --endpoint-url {s3} s3 cp {rel} s3://{layout.uploads}/images/
  {creds} .venv/bin/aws --endpoint-url {s3} s3 cp s3://{layout.results}/images/{sample.name}.json -
Or call the function directly:
  curl --data-binary @{rel} {layout.url(ports.infer)}/
  .venv/bin/lepton predict {layout.samples}/*.png
  .venv/bin/lepton put {layout.samples}/*.png --wait
  eval "$(.venv/bin/lepton env)"   # point aws/boto3 in this shell at the stack
Train a new version from a <label>/<image> folder:  .venv/bin/lepton train DIR
  (archives under datasets/large/ train in a JobSink Job: .venv/bin/lepton logs lepton-train-job)
Post an event by hand: add the header in "event_headers" of {layout.state_file}
Stop: {stop}.
"""
