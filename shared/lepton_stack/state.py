"""The local stack's addresses and state file (`.lepton/stack.json`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lepton_stack.oidc import JWKS_FILE

REGION = "us-east-1"
ACCESS_KEY = "test"  # moto accepts any credentials; these never leave the machine
SECRET_KEY = "test"
MODEL_NAME = "digits"
OVERLAYS = ("minio", "aws")  # what `make deploy OVERLAY=...` takes; minio is its default
# The OIDC audience of each function: its Knative Service name, which the Triggers in knative/
# name as `spec.subscriber.audience` and Knative sets as K_SERVICE.
AUDIENCES = {"infer": "lepton-infer", "train": "lepton-train"}
# The router's, as Knative names a Broker's audience (eventing.knative.dev/broker/<ns>/<name>).
BROKER_AUDIENCE = "eventing.knative.dev/broker/local/lepton"


class StackNotRunningError(RuntimeError):
    """No stack state or the supervisor is gone."""


class StackRunningError(RuntimeError):
    """Another process owns this state dir's stack (holds its lock)."""


class StackLock:
    """The state dir's lock, held by the one process that runs its stack for as long as it
    runs (the kernel drops it when that process dies, however it dies). Only the holder writes
    stack.json, so a second `lepton up` can neither clobber nor stop the first."""

    def __init__(self, layout: StackLayout) -> None:
        self.path = layout.root / "stack.lock"
        self._file: Any = None

    def acquire(self) -> None:
        """Hold the lock, or StackRunningError when another process holds it."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.close()
            raise StackRunningError(str(self.path)) from exc
        self._file = handle

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def probe(self) -> bool:
        """Whether some process holds the lock now (without keeping it)."""
        try:
            self.acquire()
        except StackRunningError:
            return True
        self.release()
        return False


@dataclass(frozen=True)
class Ports:
    s3: int = 4566
    router: int = 8090
    infer: int = 8081
    train: int = 8082
    webhook: int = 8091


@dataclass(frozen=True)
class StackLayout:
    """Where the stack keeps its files and which ports it uses."""

    root: Path
    ports: Ports = field(default_factory=Ports)
    host: str = "127.0.0.1"
    uploads: str = "lepton-uploads"
    results: str = "lepton-results"
    models: str = "lepton-models"
    queue: str = "lepton-uploads-events"
    model: str = MODEL_NAME
    overlay: str = OVERLAYS[0]  # the knative/overlays/<name> the router builds
    # Where the functions reach S3/SQS, when not directly (tests put a fault-injecting proxy here).
    function_endpoint: str | None = None

    @property
    def state_file(self) -> Path:
        return self.root / "stack.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def dead_letters(self) -> Path:
        return self.root / "dead-letters"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def buckets(self) -> Path:
        """Where the buckets are kept between runs (lepton_stack.persistence)."""
        return self.root / "buckets"

    @property
    def jobs(self) -> Path:
        """JobSink Jobs: one folder per Job, holding its event file."""
        return self.root / "jobs"

    @property
    def oidc(self) -> Path:
        """The local OIDC issuer's key (private) and key set (public)."""
        return self.root / "oidc"

    @property
    def sink_token(self) -> Path:
        """The token senders to the router present: what a SinkBinding mounts at /oidc/token."""
        return self.oidc / "sink-token"

    @property
    def issuer(self) -> str:
        """The `iss` of the tokens the router signs: the router's address."""
        return self.url(self.ports.router)

    def url(self, port: int) -> str:
        return f"http://{self.host}:{port}"

    @property
    def s3_endpoint(self) -> str:
        return self.url(self.ports.s3)

    def function_env(self, role: str, queue_url: str = "") -> dict[str, str]:
        """The environment a function container gets, pointed at this stack."""
        endpoint = self.s3_endpoint
        if role in ("infer", "train") and self.function_endpoint:
            endpoint = self.function_endpoint
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ENDPOINT_URL_S3": endpoint,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "LEPTON_UPLOADS_BUCKET": self.uploads,
            "LEPTON_RESULTS_BUCKET": self.results,
            "LEPTON_MODELS_BUCKET": self.models,
            "LEPTON_MODEL_NAME": self.model,
            "LEPTON_S3_ADDRESSING_STYLE": "path",
            "LEPTON_MODEL_POLL_SECONDS": "10",
            # Every port of the local stack listens on loopback only.
            "LEPTON_HOST": self.host,
            "LEPTON_WEBHOOK_HOST": self.host,
        }
        if role in AUDIENCES:
            # Events are verified as on a cluster with Knative's OIDC feature on.
            env["LEPTON_OIDC_ISSUER"] = self.issuer
            env["LEPTON_OIDC_JWKS"] = str(self.oidc / JWKS_FILE)
            env["LEPTON_OIDC_AUDIENCE"] = AUDIENCES[role]
        if role == "infer":
            env["PORT"] = str(self.ports.infer)
            env["LEPTON_MODEL_CACHE_DIR"] = str(self.root / "cache" / "infer")
        elif role == "train":
            env["PORT"] = str(self.ports.train)
            env["TF_CPP_MIN_LOG_LEVEL"] = "2"  # TensorFlow's C++ info and warnings: not ours
        elif role == "source":
            env["K_SINK"] = self.url(self.ports.router) + "/"
            env["LEPTON_SQS_QUEUE_URL"] = queue_url
            env["LEPTON_WEBHOOK_PORT"] = str(self.ports.webhook)
            env["LEPTON_SQS_WAIT_SECONDS"] = "2"
            # The router answers once the function has the event: a training takes a while.
            env["LEPTON_SINK_TIMEOUT"] = "1800"
        if role in ("source", "train"):  # the adapter, and training Jobs announcing models
            env["LEPTON_SINK_TOKEN_FILE"] = str(self.sink_token)
        return env


def write_state(layout: StackLayout, data: dict[str, Any]) -> None:
    layout.root.mkdir(parents=True, exist_ok=True)
    tmp = layout.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(layout.state_file)


def read_state(layout: StackLayout) -> dict[str, Any]:
    try:
        return json.loads(layout.state_file.read_text())
    except FileNotFoundError as exc:
        raise StackNotRunningError(
            f"no local stack found ({layout.state_file} is missing): start one with "
            "`make run` or `lepton up --detach`"
        ) from exc


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return status != "Z"
    except OSError:
        return True


def running_state(layout: StackLayout) -> dict[str, Any]:
    """The state of a running stack, or StackNotRunningError with what to do."""
    state = read_state(layout)
    if not pid_alive(state.get("pid")):
        raise StackNotRunningError(
            "the local stack is not running (its supervisor is gone): start it with "
            "`make run` or `lepton up --detach`"
        )
    return state
