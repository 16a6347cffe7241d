"""What a training request asks for, parsed from an event key, a manifest or HTTP JSON."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lepton_model.datasets import ARCHIVE_SUFFIXES, MANIFEST_NAME
from lepton_model.spec import ModelSpec, Preprocessing
from lepton_model.training import TrainingConfig
from lepton_runtime.errors import BadRequestError
from lepton_runtime.settings import Location

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_TRAINING_FIELDS = (
    "epochs",
    "batch_size",
    "validation_split",
    "test_split",
    "learning_rate",
    "patience",
    "seed",
    "augment",
)
_SPEC_FIELDS = ("filters", "dense_units", "dropout", "kernel_size", "pool_size")
# The largest network a request may ask for. Building and training costs ~16 bytes a weight
# (weights, gradients, Adam's two moments) before any activation: 50M weights are ~0.8 GB of a
# training pod's 4 GiB. The default network of the largest input the CLI chooses (64x64x3) has
# 2M; a 1024x1024 input with the default layers has 535M and took 6.9 GB to build alone.
MAX_MODEL_PARAMETERS = 50_000_000
# Each conv block is a layer to build and run; pooling by 2 leaves a 1024-pixel input 10.
MAX_CONV_BLOCKS = 16
_PREPROCESSING_FIELDS = ("channels", "background", "fit")


@dataclass(frozen=True)
class DatasetSource:
    """Where the images come from: an archive object, a manifest's folder, or inline arrays."""

    kind: str  # "archive" | "folder" | "arrays"
    bucket: str = ""
    key: str = ""
    prefix: str = ""
    name: str = ""

    def describe(self) -> str:
        if self.kind == "arrays":
            return "inline arrays"
        return f"s3://{self.bucket}/{self.key or self.prefix}"


@dataclass(frozen=True)
class TrainingRequest:
    """One training job: the data, the model name, and the options that change the result."""

    source: DatasetSource
    model_name: str
    config: TrainingConfig
    spec_options: dict[str, Any] = field(default_factory=dict)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    arrays: dict[str, Any] | None = None
    # Which of "channels", "image_size" and "background" the request set; the rest is chosen
    # from the data.
    explicit: frozenset[str] = frozenset()
    # Make the result live even when the live model has another label set.
    replace: bool = False
    # The options as the request gave them (before the deployment's defaults).
    request_options: Mapping[str, Any] = field(default_factory=dict)

    def spec(self, num_classes: int) -> ModelSpec:
        """The network to train for `num_classes` classes (BadRequestError over the limits)."""
        return checked_size(
            ModelSpec.from_dict(
                {
                    **self.spec_options,
                    "num_classes": num_classes,
                    "preprocessing": self.preprocessing,
                }
            )
        )

    def options_fingerprint(self) -> str:
        """Stable hash of everything besides the data that changes the trained model."""
        options = {
            "model": self.model_name,
            "training": self.config.to_dict(),
            "spec": self.spec_options,
            "preprocessing": self.preprocessing.to_dict(),
            **({"replace": True} if self.replace else {}),
        }
        return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()


def dataset_source_for_key(datasets: Location, bucket: str, key: str) -> DatasetSource | None:
    """Map an uploaded key to a dataset, or None for keys that do not start a training
    (the individual images of a folder dataset: only its manifest.json does).

    At any depth under the datasets prefix, as the Triggers route them (`datasets/large/` goes
    to the JobSink): `<any/path/>name.zip` (or another of ARCHIVE_SUFFIXES) is the archive
    dataset `name`; `<any/path/>name/manifest.json` is the folder dataset `name`.
    """
    if not datasets.contains(bucket, key):
        return None
    rest = key[len(datasets.prefix) :]
    folder, _, filename = rest.rpartition("/")
    lowered = filename.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if lowered.endswith(suffix) and len(filename) > len(suffix):
            return DatasetSource("archive", bucket, key, name=filename[: -len(suffix)])
    if filename == MANIFEST_NAME and folder:
        name = folder.rpartition("/")[2]
        return DatasetSource("folder", bucket, key, prefix=datasets.key(folder + "/"), name=name)
    return None


def parse_options(
    options: dict[str, Any],
    default_model: str,
    source: DatasetSource,
    arrays: dict[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> TrainingRequest:
    """Build a TrainingRequest from JSON options (a manifest or an HTTP body); `defaults`
    fill what the options leave out (e.g. the deployment's epochs)."""
    if not isinstance(options, dict):
        raise BadRequestError("training options must be a JSON object")
    given = dict(options)
    options = {**(defaults or {}), **options}
    model_name = str(
        options.get("model") or options.get("model_name") or source.name or default_model
    )
    if not _NAME.match(model_name):
        raise BadRequestError(
            f"model name {model_name!r} must be letters, digits, '.', '_' or '-' (max 63)"
        )
    try:
        config = TrainingConfig(**{k: options[k] for k in _TRAINING_FIELDS if k in options})
        prep_values = {k: options[k] for k in _PREPROCESSING_FIELDS if k in options}
        size = options.get("image_size")
        if size is not None:
            height, width = (size, size) if isinstance(size, int) else tuple(size)
            prep_values.update(height=int(height), width=int(width))
        preprocessing = Preprocessing(**prep_values)
        spec_options = {k: options[k] for k in _SPEC_FIELDS if k in options}
        if "filters" in spec_options:
            filters = spec_options["filters"]
            spec_options["filters"] = [filters] if isinstance(filters, int) else list(filters)
        spec = ModelSpec.from_dict(
            {**spec_options, "num_classes": 2, "preprocessing": preprocessing}
        )
    except (TypeError, ValueError) as exc:
        raise BadRequestError(f"invalid training options: {exc}") from exc
    checked_size(spec)  # before any dataset is read
    explicit = frozenset(
        k for k in ("channels", "image_size", "background") if options.get(k) is not None
    )
    replace = options.get("replace", False)
    if not isinstance(replace, bool):
        raise BadRequestError("replace must be true or false")
    return TrainingRequest(
        source, model_name, config, spec_options, preprocessing, arrays, explicit, replace, given
    )


def checked_size(spec: ModelSpec) -> ModelSpec:
    """`spec`, if a training may build it: at most MAX_CONV_BLOCKS conv blocks and
    MAX_MODEL_PARAMETERS weights; else BadRequestError."""
    if len(spec.filters) > MAX_CONV_BLOCKS:
        raise BadRequestError(
            f"invalid training options: {len(spec.filters)} conv blocks (filters); "
            f"the limit is {MAX_CONV_BLOCKS}"
        )
    parameters = spec.parameter_count()
    if parameters > MAX_MODEL_PARAMETERS:
        raise BadRequestError(
            f"invalid training options: the network would have {parameters} weights; the limit "
            f"is {MAX_MODEL_PARAMETERS} (a smaller image_size, dense_units or filters)"
        )
    return spec


def parse_http_request(
    payload: Any,
    datasets: Location,
    default_model: str,
    defaults: Mapping[str, Any] | None = None,
) -> TrainingRequest:
    """HTTP JSON: `{"dataset": "s3://bucket/key" | {"bucket", "key"}, ...options}` or the seed
    article's `{"x_train": [...], "y_train": [...], ...options}`."""
    if not isinstance(payload, dict):
        raise BadRequestError("expected a JSON object")
    if "x_train" in payload or "y_train" in payload:
        if "x_train" not in payload or "y_train" not in payload:
            raise BadRequestError("send both x_train and y_train")
        arrays = {"x": payload["x_train"], "y": payload["y_train"], "labels": payload.get("labels")}
        source = DatasetSource("arrays", name="")
        return parse_options(payload, default_model, source, arrays, defaults)
    dataset = payload.get("dataset")
    if isinstance(dataset, str):
        if dataset.startswith("s3://"):
            bucket, _, key = dataset[5:].partition("/")
        else:
            bucket, key = datasets.bucket, dataset if "/" in dataset else datasets.key(dataset)
    elif isinstance(dataset, dict):
        bucket, key = str(dataset.get("bucket") or datasets.bucket), str(dataset.get("key", ""))
    else:
        raise BadRequestError(
            'name a dataset: {"dataset": "s3://bucket/datasets/name.zip"}, or send x_train/y_train'
        )
    source = dataset_source_for_key(datasets, bucket, key)
    if source is None and datasets.contains(bucket, key.rstrip("/") + "/" + MANIFEST_NAME):
        source = dataset_source_for_key(datasets, bucket, key.rstrip("/") + "/" + MANIFEST_NAME)
    if source is None:
        raise BadRequestError(
            f"s3://{bucket}/{key} is not a dataset: expected {datasets}<name>.zip, "
            f"<name>.tar.gz or {datasets}<name>/ (with manifest.json)"
        )
    return parse_options(payload, default_model, source, defaults=defaults)
