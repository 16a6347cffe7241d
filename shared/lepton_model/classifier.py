"""A loaded model ready to classify: metadata + predictor + the shared decoder."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lepton_model.artifacts import ModelMetadata, read_metadata
from lepton_model.errors import ArtifactError, ImageError
from lepton_model.imaging import DEFAULT_LIMITS, ImageLimits, decode_image
from lepton_model.predictors import Predictor, RuntimeName, load_predictor


@dataclass(frozen=True)
class Prediction:
    """The top label of one image and the k best (label, confidence) pairs."""

    label: str
    confidence: float
    top_k: tuple[tuple[str, float], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "confidence": self.confidence,
            "top_k": [{"label": label, "confidence": conf} for label, conf in self.top_k],
        }


class Classifier:
    """Decode -> predict -> label, for one model version."""

    def __init__(self, metadata: ModelMetadata, predictor: Predictor, top_k: int = 3) -> None:
        expected = tuple(metadata.input_shape)
        got = tuple(getattr(predictor, "input_shape", expected))
        if got != expected:
            raise ArtifactError(f"the model takes {got} but metadata.json says {expected}")
        labels = len(metadata.labels)
        outputs = getattr(predictor, "num_classes", labels)
        if outputs != labels:
            raise ArtifactError(
                f"the model has {outputs} outputs but metadata.json lists {labels} labels"
            )
        self.metadata = metadata
        self.predictor = predictor
        self.top_k = max(1, min(top_k, len(metadata.labels)))
        self._labels = tuple(str(label) for label in metadata.labels)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def version(self) -> str:
        return self.metadata.version

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.metadata.input_shape

    def decode(self, data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
        """Encoded image -> one model input (raises ImageError)."""
        return decode_image(data, self.metadata.preprocessing, limits)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(self.input_shape):
            raise ImageError(
                f"inputs must have shape (n, {', '.join(map(str, self.input_shape))}); "
                f"got {tuple(batch.shape)}"
            )
        return self.predictor.predict(batch)

    def predictions(self, probabilities: np.ndarray) -> list[Prediction]:
        labels, k = self._labels, self.top_k
        results = []
        for row in probabilities.tolist():
            # Python's sort of a row of floats: a few µs less per image than numpy's argsort
            # for the short rows a classifier has; ties keep the label order.
            best = sorted(range(len(row)), key=row.__getitem__, reverse=True)[:k]
            top = tuple((labels[i], round(row[i], 6)) for i in best)
            results.append(Prediction(label=top[0][0], confidence=top[0][1], top_k=top))
        return results

    def classify(self, batch: np.ndarray) -> list[Prediction]:
        return self.predictions(self.probabilities(batch))

    def classify_images(
        self, images: list[bytes], limits: ImageLimits = DEFAULT_LIMITS
    ) -> list[Prediction]:
        return self.classify(np.stack([self.decode(data, limits) for data in images]))

    def accuracy_on(
        self,
        labelled: Iterable[tuple[bytes, str]],
        limits: ImageLimits = DEFAULT_LIMITS,
        batch_size: int = 256,
    ) -> tuple[float, int]:
        """(accuracy, count) on encoded images with their true label names, each decoded with
        this model's own preprocessing (an image it cannot decode counts as wrong); read and
        scored one batch at a time."""
        correct = total = 0
        batch: list[np.ndarray] = []
        truth: list[str] = []

        def score() -> int:
            if not batch:
                return 0
            best = np.argmax(self.probabilities(np.stack(batch)), axis=1).tolist()
            hits = sum(self._labels[i] == t for i, t in zip(best, truth, strict=True))
            batch.clear()
            truth.clear()
            return hits

        for data, label in labelled:
            total += 1
            try:
                batch.append(self.decode(data, limits))
            except ImageError:
                continue
            truth.append(label)
            if len(batch) >= batch_size:
                correct += score()
        correct += score()
        return (correct / total if total else 0.0), total


def load_classifier(directory: Path, runtime: RuntimeName = "auto", top_k: int = 3) -> Classifier:
    """Load an artifact directory into a Classifier."""
    return Classifier(read_metadata(directory), load_predictor(directory, runtime), top_k)
