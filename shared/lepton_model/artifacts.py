"""The model artifact directory: model.keras, model.tflite, metadata.json and plots."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lepton_model.errors import ArtifactError, RuntimeUnavailableError
from lepton_model.spec import ModelSpec, Preprocessing

if TYPE_CHECKING:  # training and plots are for export: a process that only serves never loads them
    from lepton_model.training import TrainedModel

KERAS_FILE = "model.keras"
TFLITE_FILE = "model.tflite"
METADATA_FILE = "metadata.json"
HISTORY_PLOT = "training_curves.png"
CONFUSION_PLOT = "confusion_matrix.png"
METADATA_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ModelMetadata:
    """Everything a runtime needs besides the weights, and what a person wants to know."""

    name: str
    version: str
    labels: tuple[str, ...]
    input_shape: tuple[int, int, int]
    preprocessing: Preprocessing
    spec: ModelSpec
    metrics: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    package_version: str = ""
    created: str = ""
    files: tuple[str, ...] = ()
    # filename -> {"size": bytes, "sha256": hex digest}: what a download must hold.
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["schema_version"] = METADATA_SCHEMA_VERSION
        data["labels"] = list(self.labels)
        data["input_shape"] = list(self.input_shape)
        data["preprocessing"] = self.preprocessing.to_dict()
        data["spec"] = self.spec.to_dict()
        data["files"] = list(self.files)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetadata:
        try:
            preprocessing = Preprocessing.from_dict(data["preprocessing"])
            return cls(
                name=str(data["name"]),
                version=str(data["version"]),
                labels=tuple(str(label) for label in data["labels"]),
                input_shape=tuple(int(v) for v in data["input_shape"]),  # type: ignore[arg-type]
                preprocessing=preprocessing,
                spec=ModelSpec.from_dict(data.get("spec", {"num_classes": len(data["labels"])})),
                metrics=dict(data.get("metrics", {})),
                dataset=dict(data.get("dataset", {})),
                training=dict(data.get("training", {})),
                package_version=str(data.get("package_version", "")),
                created=str(data.get("created", "")),
                files=tuple(data.get("files", ())),
                artifacts={
                    str(name): {"size": int(entry["size"]), "sha256": str(entry["sha256"])}
                    for name, entry in dict(data.get("artifacts", {})).items()
                },
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"metadata.json is invalid ({exc!r})") from exc


def litert_available() -> bool:
    return importlib.util.find_spec("ai_edge_litert") is not None


def tensorflow_available() -> bool:
    return importlib.util.find_spec("keras") is not None and (
        importlib.util.find_spec("tensorflow") is not None
    )


def runtime_file(wanted: str, metadata: ModelMetadata, published: set[str]) -> tuple[str, str]:
    """The runtime to use for `wanted` (auto, litert, tensorflow) and the one artifact file it
    needs, from the files `published` of a version (without loading any runtime)."""
    if wanted in ("auto", "litert") and TFLITE_FILE in published and litert_available():
        return "litert", TFLITE_FILE
    if wanted == "litert":
        if not litert_available():
            raise RuntimeUnavailableError("LiteRT (ai-edge-litert) is not installed")
        raise ArtifactError(f"{metadata.name}/{metadata.version} has no {TFLITE_FILE}")
    if KERAS_FILE not in published:
        raise ArtifactError(
            f"{metadata.name}/{metadata.version} has no file this runtime can load "
            f"(published: {', '.join(sorted(published)) or 'nothing'})"
        )
    if not tensorflow_available():
        raise RuntimeUnavailableError(
            f"{metadata.name}/{metadata.version} needs TensorFlow, which is not installed"
        )
    return "tensorflow", KERAS_FILE


def to_tflite(model: Any) -> bytes:
    """Convert a Keras model to a LiteRT (TFLite) flatbuffer.

    Exported as a SavedModel first, quietly: `from_keras_model` does the same export but prints
    its endpoint summary into the training function's log on every training.
    """
    import tempfile

    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="lepton-export-") as saved:
        model.export(saved, format="tf_saved_model", verbose=False)
        return tf.lite.TFLiteConverter.from_saved_model(saved).convert()


def export_artifact(
    trained: TrainedModel,
    directory: Path,
    name: str,
    version: str,
    dataset_digest: str = "",
    extra: dict[str, Any] | None = None,
    plots: bool = True,
) -> ModelMetadata:
    """Write the artifact files into `directory` (metadata.json last) and return the metadata."""
    from lepton_model import __version__

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    trained.model.save(directory / KERAS_FILE)
    (directory / TFLITE_FILE).write_bytes(to_tflite(trained.model))
    files = [KERAS_FILE, TFLITE_FILE]
    if plots:
        from lepton_model.plots import plot_confusion, plot_history

        title = f"{name} {version}"
        plot_history(trained.history, directory / HISTORY_PLOT, title)
        plot_confusion(trained.evaluation, directory / CONFUSION_PLOT, title)
        files += [HISTORY_PLOT, CONFUSION_PLOT]
    evaluation = trained.evaluation
    metadata = ModelMetadata(
        name=name,
        version=version,
        labels=trained.class_names,
        input_shape=trained.spec.preprocessing.input_shape,
        preprocessing=trained.spec.preprocessing,
        spec=trained.spec,
        metrics={
            "test_accuracy": evaluation.accuracy,
            "test_count": evaluation.count,
            "val_accuracy": trained.validation.accuracy,
            "val_count": trained.validation.count,
            "per_class_accuracy": dict(evaluation.per_class_accuracy),
            "confusion_matrix": [list(row) for row in evaluation.confusion_matrix],
            "final_loss": trained.history.get("loss", [None])[-1],
            "final_val_loss": trained.history.get("val_loss", [None])[-1],
            "best_epoch": _best_epoch(trained.history),
        },
        dataset={
            "digest": dataset_digest,
            "classes": list(trained.class_names),
            "train_count": trained.train_count,
        },
        training={
            **trained.config.to_dict(),
            "epochs_run": trained.epochs_run,
            "duration_seconds": round(trained.duration_seconds, 3),
            "images_per_second": round(trained.images_per_second, 1),
            **(extra or {}),
        },
        package_version=__version__,
        created=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        files=(*files, METADATA_FILE),
        artifacts={name: file_digest(directory / name) for name in files},
    )
    write_metadata(directory, metadata)
    return metadata


def file_digest(path: Path) -> dict[str, Any]:
    """`{"size", "sha256"}` of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with Path(path).open("rb") as stream:
        while chunk := stream.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def write_metadata(directory: Path, metadata: ModelMetadata) -> Path:
    path = Path(directory) / METADATA_FILE
    path.write_text(json.dumps(metadata.to_dict(), indent=2, sort_keys=True))
    return path


def read_metadata(directory: Path) -> ModelMetadata:
    path = Path(directory) / METADATA_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path} is missing") from exc
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} must hold a JSON object")
    return ModelMetadata.from_dict(data)


def _best_epoch(history: Any) -> Any:
    from lepton_model.plots import best_epoch

    return best_epoch(history)
