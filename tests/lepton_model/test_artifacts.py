"""The artifact directory: files, metadata round trip, invalid metadata, safe loading."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import pytest
from PIL import Image

import lepton_model
from lepton_model.artifacts import (
    CONFUSION_PLOT,
    HISTORY_PLOT,
    KERAS_FILE,
    METADATA_FILE,
    TFLITE_FILE,
    ModelMetadata,
    read_metadata,
)
from lepton_model.datasets import Dataset
from lepton_model.errors import ArtifactError
from lepton_model.predictors import load_predictor

if TYPE_CHECKING:
    from conftest import ExportedModel


def test_export_writes_models_metadata_and_plots(tiny_artifact: ExportedModel) -> None:
    names = {path.name for path in tiny_artifact.directory.iterdir()}

    assert names == {KERAS_FILE, TFLITE_FILE, METADATA_FILE, HISTORY_PLOT, CONFUSION_PLOT}
    assert set(tiny_artifact.metadata.files) == names


@pytest.mark.parametrize("plot", [HISTORY_PLOT, CONFUSION_PLOT])
def test_plots_are_valid_pngs(plot: str, tiny_artifact: ExportedModel) -> None:
    with Image.open(tiny_artifact.directory / plot) as image:
        image.verify()
        assert image.format == "PNG"


def test_tflite_file_is_a_flatbuffer_model(tiny_artifact: ExportedModel) -> None:
    assert (tiny_artifact.directory / TFLITE_FILE).read_bytes()[4:8] == b"TFL3"


def test_metadata_describes_the_model(tiny_artifact: ExportedModel, tiny_dataset: Dataset) -> None:
    data = json.loads((tiny_artifact.directory / METADATA_FILE).read_text())
    trained = tiny_artifact.trained

    assert (data["name"], data["version"]) == ("tiny", "v1")
    assert data["labels"] == ["0", "1", "2"]
    assert data["input_shape"] == [28, 28, 1]
    assert data["preprocessing"] == {
        "height": 28,
        "width": 28,
        "channels": 1,
        "background": "dark",
        "fit": "pad",
        "crop": True,
    }
    assert data["spec"]["filters"] == [4, 8]
    assert data["metrics"]["val_accuracy"] == trained.evaluation.accuracy
    assert data["metrics"]["confusion_matrix"] == [
        list(r) for r in trained.evaluation.confusion_matrix
    ]
    assert data["dataset"]["digest"] == tiny_dataset.digest
    assert data["training"]["seed"] == trained.config.seed
    assert data["package_version"] == lepton_model.__version__
    assert datetime.fromisoformat(data["created"].replace("Z", "+00:00")).tzinfo is not None
    assert data["schema_version"] == 1


def test_read_metadata_round_trips(tiny_artifact: ExportedModel) -> None:
    assert read_metadata(tiny_artifact.directory) == tiny_artifact.metadata


def test_missing_metadata_is_an_artifact_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="missing"):
        read_metadata(tmp_path)


def _without(key: str) -> Any:
    def edit(data: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in data.items() if k != key}

    return edit


def _with(key: str, value: Any) -> Any:
    def edit(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, key: value}

    return edit


@pytest.mark.parametrize(
    "edit",
    [
        lambda data: "{not json",
        lambda data: b"\xff\xfe\x00binary",
        lambda data: [data],
        _without("labels"),
        _without("preprocessing"),
        _with("labels", 3),
        _with("input_shape", ["a", 28, 1]),
        _with("preprocessing", {"channels": 2}),
        _with("preprocessing", "28x28"),
        _with("spec", {"num_classes": 1}),
        _with("metrics", "accurate"),
    ],
    ids=[
        "not-json",
        "binary",
        "not-an-object",
        "no-labels",
        "no-preprocessing",
        "labels-not-a-list",
        "bad-input-shape",
        "bad-channels",
        "preprocessing-not-an-object",
        "bad-spec",
        "metrics-not-an-object",
    ],
)
def test_invalid_metadata_is_an_artifact_error(edit: Any, tiny_artifact_copy: Path) -> None:
    path = tiny_artifact_copy / METADATA_FILE
    edited = edit(json.loads(path.read_text()))
    if isinstance(edited, bytes):
        path.write_bytes(edited)
    else:
        path.write_text(edited if isinstance(edited, str) else json.dumps(edited))

    with pytest.raises(ArtifactError):
        read_metadata(tiny_artifact_copy)


def test_metadata_from_dict_tolerates_missing_optional_fields() -> None:
    metadata = ModelMetadata.from_dict(
        {
            "name": "m",
            "version": "1",
            "labels": ["a", "b"],
            "input_shape": [28, 28, 1],
            "preprocessing": {},
        }
    )

    assert metadata.spec.num_classes == 2
    assert metadata.metrics == {} and metadata.created == ""


def test_a_keras_file_with_a_lambda_layer_is_refused(tmp_path: Path) -> None:
    """Loading never runs code from the artifact: Keras safe_mode refuses Python lambdas."""
    inputs = keras.Input((28, 28, 1))
    doubled = keras.layers.Lambda(lambda x: x * 2.0)(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(doubled))
    keras.Model(inputs, outputs).save(tmp_path / KERAS_FILE)
    unsafe = keras.saving.load_model(tmp_path / KERAS_FILE, safe_mode=False)
    assert any(isinstance(layer, keras.layers.Lambda) for layer in unsafe.layers)

    with pytest.raises(ArtifactError, match="Lambda"):
        load_predictor(tmp_path, runtime="tensorflow")


@pytest.mark.slow
def test_digits_artifact_records_its_dataset_and_accuracy(
    digits_artifact: ExportedModel, digits_dataset: Dataset
) -> None:
    metadata = read_metadata(digits_artifact.directory)

    assert metadata.labels == tuple(str(d) for d in range(10))
    assert metadata.dataset["digest"] == digits_dataset.digest
    assert metadata.metrics["val_accuracy"] >= 0.97
    assert np.array(metadata.metrics["confusion_matrix"]).sum() == metadata.metrics["test_count"]
