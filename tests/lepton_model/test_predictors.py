"""Runtimes: LiteRT and TensorFlow agree; load_predictor picks and falls back; typed errors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from lepton_model import predictors
from lepton_model.artifacts import KERAS_FILE, TFLITE_FILE
from lepton_model.datasets import Dataset
from lepton_model.errors import ArtifactError, RuntimeUnavailableError
from lepton_model.predictors import KerasPredictor, LiteRTPredictor, load_predictor

if TYPE_CHECKING:
    from conftest import ExportedModel

BATCH_SIZES = [1, 3, 32]


def batch_of(dataset: Dataset, size: int) -> np.ndarray:
    return dataset.images[np.arange(size) % len(dataset)]


@pytest.mark.parametrize("size", BATCH_SIZES)
def test_litert_and_tensorflow_agree_within_1e_5(
    size: int, tiny_artifact: ExportedModel, tiny_dataset: Dataset
) -> None:
    """The tiny two-block CNN with dropout, on real digit inputs."""
    batch = batch_of(tiny_dataset, size)

    lite = load_predictor(tiny_artifact.directory, "litert").predict(batch)
    full = load_predictor(tiny_artifact.directory, "tensorflow").predict(batch)

    assert lite.shape == full.shape == (size, 3)
    np.testing.assert_allclose(lite, full, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("size", BATCH_SIZES)
def test_litert_and_tensorflow_agree_within_1e_5_on_the_digits_model(
    size: int, digits_artifact: ExportedModel, digits_dataset: Dataset
) -> None:
    batch = batch_of(digits_dataset, size)

    lite = load_predictor(digits_artifact.directory, "litert").predict(batch)
    full = load_predictor(digits_artifact.directory, "tensorflow").predict(batch)

    assert lite.shape == full.shape == (size, 10)
    np.testing.assert_allclose(lite, full, atol=1e-5, rtol=0)
    assert np.array_equal(lite.argmax(axis=1), full.argmax(axis=1))


@pytest.mark.parametrize("runtime", ["litert", "tensorflow"])
def test_predictions_are_probability_rows(
    runtime: str, tiny_artifact: ExportedModel, tiny_dataset: Dataset
) -> None:
    predictor = load_predictor(tiny_artifact.directory, runtime)  # type: ignore[arg-type]

    probabilities = predictor.predict(batch_of(tiny_dataset, 5))

    assert predictor.runtime == runtime
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (predictor.input_shape, predictor.num_classes) == ((28, 28, 1), 3)  # type: ignore[attr-defined]


def test_litert_serves_many_batch_sizes_in_any_order(
    tiny_artifact: ExportedModel, tiny_dataset: Dataset
) -> None:
    """More batch sizes than cached interpreters, revisited: answers never depend on history."""
    predictor = LiteRTPredictor(tiny_artifact.directory / TFLITE_FILE, max_interpreters=2)
    singles = np.concatenate(
        [predictor.predict(batch_of(tiny_dataset, 7)[i : i + 1]) for i in range(7)]
    )

    for size in (5, 2, 7, 3, 5, 1, 7):
        np.testing.assert_allclose(
            predictor.predict(batch_of(tiny_dataset, size)), singles[:size], atol=1e-6
        )


def test_litert_loads_from_bytes(tiny_artifact: ExportedModel, tiny_dataset: Dataset) -> None:
    content = (tiny_artifact.directory / TFLITE_FILE).read_bytes()
    from_path = LiteRTPredictor(tiny_artifact.directory / TFLITE_FILE)

    from_bytes = LiteRTPredictor(content)

    batch = batch_of(tiny_dataset, 2)
    assert np.array_equal(from_bytes.predict(batch), from_path.predict(batch))


def test_auto_picks_litert(tiny_artifact: ExportedModel) -> None:
    assert isinstance(load_predictor(tiny_artifact.directory), LiteRTPredictor)


def test_auto_falls_back_to_keras_without_a_tflite_file(tiny_artifact_copy: Path) -> None:
    (tiny_artifact_copy / TFLITE_FILE).unlink()

    assert isinstance(load_predictor(tiny_artifact_copy), KerasPredictor)


def test_auto_falls_back_to_keras_when_litert_is_not_installed(
    tiny_artifact: ExportedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(predictors, "litert_available", lambda: False)

    assert isinstance(load_predictor(tiny_artifact.directory), KerasPredictor)


def test_requesting_litert_when_it_is_not_installed_is_a_runtime_error(
    tiny_artifact: ExportedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(predictors, "litert_available", lambda: False)

    with pytest.raises(RuntimeUnavailableError, match="ai-edge-litert"):
        load_predictor(tiny_artifact.directory, "litert")


def test_keras_only_artifact_without_tensorflow_is_a_runtime_error(
    tiny_artifact_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tiny_artifact_copy / TFLITE_FILE).unlink()
    monkeypatch.setattr(predictors, "tensorflow_available", lambda: False)

    with pytest.raises(RuntimeUnavailableError, match="TensorFlow"):
        load_predictor(tiny_artifact_copy)


def test_an_unknown_runtime_is_a_runtime_error(tiny_artifact: ExportedModel) -> None:
    with pytest.raises(RuntimeUnavailableError, match="onnx"):
        load_predictor(tiny_artifact.directory, "onnx")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("runtime", "remove", "message"),
    [
        ("litert", [TFLITE_FILE], "model.tflite is missing"),
        ("tensorflow", [KERAS_FILE], "neither"),
        ("auto", [TFLITE_FILE, KERAS_FILE], "neither"),
    ],
    ids=["litert-without-tflite", "tensorflow-without-keras", "auto-without-either"],
)
def test_missing_model_files_are_artifact_errors(
    runtime: str, remove: list[str], message: str, tiny_artifact_copy: Path
) -> None:
    for name in remove:
        (tiny_artifact_copy / name).unlink()

    with pytest.raises(ArtifactError, match=message):
        load_predictor(tiny_artifact_copy, runtime)  # type: ignore[arg-type]


@pytest.mark.parametrize(("runtime", "name"), [("litert", TFLITE_FILE), ("tensorflow", KERAS_FILE)])
def test_corrupt_model_files_are_artifact_errors(
    runtime: str, name: str, tiny_artifact_copy: Path
) -> None:
    (tiny_artifact_copy / name).write_bytes(b"this is not a model")

    with pytest.raises(ArtifactError, match="cannot be loaded"):
        load_predictor(tiny_artifact_copy, runtime)  # type: ignore[arg-type]
