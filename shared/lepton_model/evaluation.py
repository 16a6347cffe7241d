"""Classification metrics from probabilities, in plain numpy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Evaluation:
    """Accuracy, per-class accuracy (recall) and the confusion matrix (rows = true class)."""

    accuracy: float
    per_class_accuracy: dict[str, float]
    confusion_matrix: tuple[tuple[int, ...], ...]
    class_names: tuple[str, ...]
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "per_class_accuracy": dict(self.per_class_accuracy),
            "confusion_matrix": [list(row) for row in self.confusion_matrix],
            "class_names": list(self.class_names),
            "count": self.count,
        }


def evaluate(
    probabilities: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]
) -> Evaluation:
    """Score predicted class probabilities (n, k) against integer labels (n,)."""
    predicted = np.argmax(probabilities, axis=1)
    k = len(class_names)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    totals = confusion.sum(axis=1)
    per_class = {
        name: (float(confusion[i, i] / totals[i]) if totals[i] else 0.0)
        for i, name in enumerate(class_names)
    }
    count = int(labels.shape[0])
    accuracy = float(np.trace(confusion) / count) if count else 0.0
    return Evaluation(
        accuracy=accuracy,
        per_class_accuracy=per_class,
        confusion_matrix=tuple(tuple(int(v) for v in row) for row in confusion),
        class_names=tuple(class_names),
        count=count,
    )
