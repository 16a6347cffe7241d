"""All configuration, read from the environment once (`Settings.from_env`).

S3 endpoint, region and credentials are NOT read here: boto3 finds them itself
(AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_REGION / AWS_DEFAULT_REGION, the credential chain).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lepton_runtime.errors import ConfigurationError

if TYPE_CHECKING:  # imaging brings numpy and PIL: a process that only reads settings (the
    # model prefetch, entry.py before the server loads) does without them
    from lepton_model.imaging import ImageLimits

FunctionRole = Literal["infer", "train", "source"]


@dataclass(frozen=True)
class Location:
    """A bucket and a key prefix ("" = the whole bucket)."""

    bucket: str
    prefix: str = ""

    def contains(self, bucket: str, key: str) -> bool:
        return bucket == self.bucket and key.startswith(self.prefix)

    def overlaps(self, other: Location) -> bool:
        """True when some key could be inside both locations."""
        return self.bucket == other.bucket and (
            self.prefix.startswith(other.prefix) or other.prefix.startswith(self.prefix)
        )

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class S3Settings:
    """Client tuning only; endpoint and credentials come from boto3's own configuration."""

    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    connect_timeout: float = 3.0
    read_timeout: float = 20.0
    max_attempts: int = 3
    endpoint_url: str | None = None  # informational: what boto3 will use, for logs and status


@dataclass(frozen=True)
class Settings:
    """The whole configuration of one function process."""

    images: Location = Location("lepton-uploads", "images/")
    datasets: Location = Location("lepton-uploads", "datasets/")
    results: Location = Location("lepton-results", "")
    models: Location = Location("lepton-models", "")
    model_name: str = "digits"
    model_version: str = ""  # a pin (canary revisions); empty = follow <model>/latest.json
    runtime: Literal["auto", "litert", "tensorflow"] = "auto"
    model_cache_dir: Path = Path("/tmp/lepton-models")
    model_poll_seconds: float = 30.0
    # Models other than the default loaded at once (on first use; least recently used out).
    max_loaded_models: int = 8
    loaded_model_bytes: int = 256 * 1024 * 1024
    top_k: int = 3
    max_body_bytes: int = 32 * 1024 * 1024
    # Request bodies one process holds at once, all connections together (see server.BodyBudget).
    max_buffered_body_bytes: int = 64 * 1024 * 1024
    body_wait_seconds: float = 2.0  # how long a body waits for room in that budget, then 503
    max_form_parts: int = 128  # multipart parts per request (files and fields)
    max_form_memory_bytes: int = 64 * 1024  # a non-file form field held in memory
    max_json_values: int = 1_000_000  # values one JSON body may hold (see jsonio)
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    # Decoder memory per image, and for all images a process decodes at once (lepton_model's
    # DecodeBudget): with a LiteRT worker's ~85 MB, what a 512 Mi pod affords.
    max_image_decode_bytes: int = 160 * 1024 * 1024
    max_batch_images: int = 64
    max_dataset_bytes: int = 512 * 1024 * 1024
    max_dataset_unpacked_bytes: int = 1024 * 1024 * 1024  # every byte inflated from an archive
    max_dataset_entries: int = 150_000  # archive entries or folder objects, kept or skipped
    max_dataset_decoded_bytes: int = 256 * 1024 * 1024  # the decoded images, float32
    train_epochs: int = 30  # when a training request does not say
    min_accuracy: float = 0.9
    gate_tolerance: float = 0.02
    # A training's lease on its run record: renewed every third of it; a crashed run is taken
    # over by the next delivery once it ran out.
    training_lease_seconds: float = 120.0
    # How long a delivery of a run another replica is training waits for its result.
    training_wait_seconds: float = 1800.0
    event_source: str = ""
    # Event ingress authentication (Knative Eventing's OIDC sender identity): "oidc" verifies
    # every event's `Authorization: Bearer <JWT>` (see lepton_runtime.events.auth); "off" for
    # clusters without OIDC, logged loudly at start-up.
    event_auth: Literal["oidc", "off"] = "oidc"
    oidc_issuer: str = ""  # the `iss` tokens must carry (the cluster's service-account issuer)
    oidc_audience: str = ""  # the `aud` they must be for; empty: K_SERVICE (this Service)
    # Where the issuer's keys are: a JWKS URL or file; empty: OIDC discovery from the issuer.
    oidc_jwks: str = ""
    oidc_ca_file: str = ""  # CA bundle for an https JWKS/discovery URL (the API server's)
    oidc_jwks_bearer_file: str = ""  # a file whose content authorizes the JWKS fetch
    oidc_leeway_seconds: float = 10.0  # clock skew allowed on exp/nbf/iat
    host: str = "0.0.0.0"  # the function server's listening address; the local stack: loopback
    port: int = 8080
    keep_alive_seconds: int = 30  # idle keep-alive connections are closed after this
    functions_dir: Path = Path("functions")  # where `lepton serve` finds <role>/func.py
    threads: int = 4
    workers: int = 0  # server processes; 0 = one per available CPU
    log_level: str = "INFO"
    # One JSON line per request (method, path, status, milliseconds) on the function's log.
    access_log: bool = True
    # How late a request line may go out: the lines of that long are written together.
    access_log_flush_seconds: float = 0.05
    service: str = ""
    revision: str = ""
    s3: S3Settings = field(default_factory=S3Settings)
    # event-source adapter
    sink: str = ""
    queue_url: str = ""
    webhook_port: int = 0
    webhook_token: str = ""
    webhook_host: str = "0.0.0.0"  # beyond loopback, a token is required
    poll_wait_seconds: int = 20
    source_concurrency: int = 8
    sink_timeout: float = 30.0
    # A SinkBinding (and a ContainerSource) with Knative's OIDC feature mounts a token for the
    # sink's audience here; when the file exists, every POST to K_SINK carries it.
    sink_token_file: Path = Path("/oidc/token")
    ce_overrides: tuple[tuple[str, str], ...] = ()  # K_CE_OVERRIDES extensions, as pairs

    @property
    def image_limits(self) -> ImageLimits:
        """What one image may cost to decode, for both functions."""
        from lepton_model.imaging import ImageLimits

        return ImageLimits(
            max_bytes=self.max_image_bytes,
            max_pixels=self.max_image_pixels,
            max_decode_bytes=self.max_image_decode_bytes,
        )

    @property
    def body_budget_bytes(self) -> int:
        """What one process may hold of request bodies: never less than one whole body."""
        return max(self.max_buffered_body_bytes, self.max_body_bytes)

    @property
    def trigger_locations(self) -> tuple[Location, ...]:
        """Where an upload starts work; nothing the functions write may land here."""
        return (self.images, self.datasets)

    def served(self, role: FunctionRole) -> tuple[Location, ...]:
        """The locations a function may be asked to read objects from."""
        if role == "infer":
            return (self.images,)
        if role == "train":
            return (self.datasets,)
        return self.trigger_locations

    def check(self) -> Settings:
        """Refuse set-ups where a function's own output would trigger work (recursion)."""
        for output_name, output in (("results", self.results), ("models", self.models)):
            for trigger in self.trigger_locations:
                if output.overlaps(trigger):
                    raise ConfigurationError(
                        f"the {output_name} location {output} overlaps the trigger location "
                        f"{trigger}: every write would start new work. Use another bucket or "
                        "prefix."
                    )
        if self.results.overlaps(self.models):
            raise ConfigurationError(f"results {self.results} and models {self.models} overlap")
        if not self.model_name or "/" in self.model_name:
            raise ConfigurationError("LEPTON_MODEL_NAME must be a non-empty name without '/'")
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every LEPTON_* variable (and PORT, K_SINK, K_SERVICE, K_REVISION) once."""
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        uploads = reader.str("LEPTON_UPLOADS_BUCKET", "lepton-uploads")
        settings = cls(
            images=Location(uploads, reader.prefix("LEPTON_IMAGES_PREFIX", "images/")),
            datasets=Location(uploads, reader.prefix("LEPTON_DATASETS_PREFIX", "datasets/")),
            results=Location(
                reader.str("LEPTON_RESULTS_BUCKET", "lepton-results"),
                reader.prefix("LEPTON_RESULTS_PREFIX", ""),
            ),
            models=Location(
                reader.str("LEPTON_MODELS_BUCKET", "lepton-models"),
                reader.prefix("LEPTON_MODELS_PREFIX", ""),
            ),
            model_name=reader.str("LEPTON_MODEL_NAME", "digits"),
            model_version=reader.str("LEPTON_MODEL_VERSION", ""),
            runtime=reader.choice("LEPTON_RUNTIME", "auto", ("auto", "litert", "tensorflow")),
            model_cache_dir=Path(reader.str("LEPTON_MODEL_CACHE_DIR", "/tmp/lepton-models")),
            model_poll_seconds=reader.float("LEPTON_MODEL_POLL_SECONDS", 30.0, minimum=0.0),
            max_loaded_models=reader.int("LEPTON_MAX_LOADED_MODELS", 8, minimum=1, maximum=256),
            loaded_model_bytes=reader.int(
                "LEPTON_LOADED_MODEL_BYTES", 256 * 1024 * 1024, minimum=1024 * 1024
            ),
            top_k=reader.int("LEPTON_TOP_K", 3, minimum=1),
            max_body_bytes=reader.int("LEPTON_MAX_BODY_BYTES", 32 * 1024 * 1024, minimum=1),
            max_buffered_body_bytes=reader.int(
                "LEPTON_MAX_BUFFERED_BODY_BYTES", 64 * 1024 * 1024, minimum=1
            ),
            max_form_parts=reader.int("LEPTON_MAX_FORM_PARTS", 128, minimum=1),
            max_json_values=reader.int("LEPTON_MAX_JSON_VALUES", 1_000_000, minimum=16),
            max_image_bytes=reader.int("LEPTON_MAX_IMAGE_BYTES", 20 * 1024 * 1024, minimum=1),
            max_image_pixels=reader.int("LEPTON_MAX_IMAGE_PIXELS", 40_000_000, minimum=1),
            max_image_decode_bytes=reader.int(
                "LEPTON_MAX_IMAGE_DECODE_BYTES", 160 * 1024 * 1024, minimum=1024 * 1024
            ),
            max_batch_images=reader.int("LEPTON_MAX_BATCH_IMAGES", 64, minimum=1),
            max_dataset_bytes=reader.int("LEPTON_MAX_DATASET_BYTES", 512 * 1024 * 1024, minimum=1),
            max_dataset_unpacked_bytes=reader.int(
                "LEPTON_MAX_DATASET_UNPACKED_BYTES", 1024 * 1024 * 1024, minimum=1
            ),
            max_dataset_entries=reader.int("LEPTON_MAX_DATASET_ENTRIES", 150_000, minimum=1),
            max_dataset_decoded_bytes=reader.int(
                "LEPTON_MAX_DATASET_DECODED_BYTES", 256 * 1024 * 1024, minimum=1
            ),
            train_epochs=reader.int("LEPTON_TRAIN_EPOCHS", 30, minimum=1, maximum=1000),
            min_accuracy=reader.float("LEPTON_MIN_ACCURACY", 0.9, minimum=0.0, maximum=1.0),
            gate_tolerance=reader.float("LEPTON_GATE_TOLERANCE", 0.02, minimum=0.0, maximum=1.0),
            training_lease_seconds=reader.float(
                "LEPTON_TRAINING_LEASE_SECONDS", 120.0, minimum=1.0, maximum=3600.0
            ),
            training_wait_seconds=reader.float(
                "LEPTON_TRAINING_WAIT_SECONDS", 1800.0, minimum=0.0, maximum=86400.0
            ),
            event_source=reader.str("LEPTON_EVENT_SOURCE", ""),
            event_auth=reader.choice("LEPTON_EVENT_AUTH", "oidc", ("oidc", "off")),
            oidc_issuer=reader.str("LEPTON_OIDC_ISSUER", ""),
            oidc_audience=reader.str("LEPTON_OIDC_AUDIENCE", "") or reader.str("K_SERVICE", ""),
            oidc_jwks=reader.str("LEPTON_OIDC_JWKS", ""),
            oidc_ca_file=reader.str("LEPTON_OIDC_CA_FILE", ""),
            oidc_jwks_bearer_file=reader.str("LEPTON_OIDC_JWKS_BEARER_FILE", ""),
            oidc_leeway_seconds=reader.float(
                "LEPTON_OIDC_LEEWAY_SECONDS", 10.0, minimum=0.0, maximum=300.0
            ),
            host=reader.str("LEPTON_HOST", "0.0.0.0"),
            port=reader.int("PORT", 8080, minimum=1, maximum=65535),
            functions_dir=Path(reader.str("LEPTON_FUNCTIONS_DIR", "functions")),
            threads=reader.int("LEPTON_THREADS", 4, minimum=1),
            workers=reader.int("LEPTON_WORKERS", 0, minimum=0, maximum=64),
            log_level=reader.str("LEPTON_LOG_LEVEL", "INFO").upper(),
            access_log=reader.choice("LEPTON_ACCESS_LOG", "on", ("on", "off")) == "on",
            access_log_flush_seconds=reader.float(
                "LEPTON_ACCESS_LOG_FLUSH_SECONDS", 0.05, minimum=0.0, maximum=60.0
            ),
            service=reader.str("K_SERVICE", ""),
            revision=reader.str("K_REVISION", ""),
            s3=S3Settings(
                addressing_style=reader.choice(
                    "LEPTON_S3_ADDRESSING_STYLE", "auto", ("auto", "path", "virtual")
                ),
                connect_timeout=reader.float("LEPTON_S3_CONNECT_TIMEOUT", 3.0, minimum=0.1),
                read_timeout=reader.float("LEPTON_S3_READ_TIMEOUT", 20.0, minimum=0.1),
                max_attempts=reader.int("LEPTON_S3_MAX_ATTEMPTS", 3, minimum=1),
                endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
            ),
            sink=reader.str("K_SINK", ""),
            queue_url=reader.str("LEPTON_SQS_QUEUE_URL", ""),
            webhook_port=reader.int("LEPTON_WEBHOOK_PORT", 0, minimum=0, maximum=65535),
            webhook_token=reader.str("LEPTON_WEBHOOK_TOKEN", ""),
            webhook_host=reader.str("LEPTON_WEBHOOK_HOST", "0.0.0.0"),
            poll_wait_seconds=reader.int("LEPTON_SQS_WAIT_SECONDS", 20, minimum=0, maximum=20),
            source_concurrency=reader.int("LEPTON_SOURCE_CONCURRENCY", 8, minimum=1, maximum=100),
            sink_timeout=reader.float("LEPTON_SINK_TIMEOUT", 30.0, minimum=0.1),
            sink_token_file=Path(reader.str("LEPTON_SINK_TOKEN_FILE", "/oidc/token")),
            ce_overrides=reader.ce_overrides("K_CE_OVERRIDES"),
        )
        return settings.check()


class _Reader:
    """Typed access to environment variables with errors that name the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def str(self, name: str, default: str) -> str:
        value = self._env.get(name)
        return default if value is None or value.strip() == "" else value.strip()

    def prefix(self, name: str, default: str) -> str:
        value = self._env.get(name)
        value = default if value is None else value.strip().lstrip("/")
        return value if not value or value.endswith("/") else value + "/"

    def int(
        self, name: str, default: int, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        raw = self.str(name, "")
        try:
            value = int(raw) if raw else default
        except ValueError as exc:
            raise ConfigurationError(f"{name}={raw!r} is not an integer") from exc
        return self._bounded(name, value, minimum, maximum)

    def float(
        self, name: str, default: float, minimum: float | None = None, maximum: float | None = None
    ) -> float:
        raw = self.str(name, "")
        try:
            value = float(raw) if raw else default
        except ValueError as exc:
            raise ConfigurationError(f"{name}={raw!r} is not a number") from exc
        return self._bounded(name, value, minimum, maximum)

    def ce_overrides(self, name: str) -> tuple[tuple[str, str], ...]:
        """The SinkBinding contract's `{"extensions": {"name": "value"}}`, as sorted pairs."""
        raw = self.str(name, "")
        if not raw:
            return ()
        try:
            extensions = json.loads(raw).get("extensions") or {}
            pairs = tuple(sorted((str(k), str(v)) for k, v in extensions.items()))
        except (ValueError, AttributeError) as exc:
            raise ConfigurationError(f'{name} is not {{"extensions": {{...}}}} JSON') from exc
        return pairs

    def choice(self, name: str, default: str, allowed: tuple[str, ...]):  # type: ignore[no-untyped-def]
        value = self.str(name, default).lower()
        if value not in allowed:
            raise ConfigurationError(f"{name}={value!r}; expected one of {', '.join(allowed)}")
        return value

    @staticmethod
    def _bounded(name, value, minimum, maximum):  # type: ignore[no-untyped-def]
        if minimum is not None and value < minimum:
            raise ConfigurationError(f"{name}={value} is below the minimum {minimum}")
        if maximum is not None and value > maximum:
            raise ConfigurationError(f"{name}={value} is above the maximum {maximum}")
        return value


# prometheus-client's multiprocess mode is configured by its own variable, which the library reads
# when it is imported: the server sets it (before loading a function with several workers) and the
# metrics ask whether it is set, both through here.
METRICS_MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def metrics_multiprocess_dir() -> str | None:
    """The folder prometheus-client's worker processes share their values in, when set."""
    return os.environ.get(METRICS_MULTIPROCESS_VARIABLE) or None


def use_metrics_multiprocess_dir(path: str) -> None:
    os.environ[METRICS_MULTIPROCESS_VARIABLE] = path
