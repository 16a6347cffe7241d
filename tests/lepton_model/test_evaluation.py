"""Accuracy, per-class accuracy and the confusion matrix on a hand-made example."""

from __future__ import annotations

import json

import numpy as np

from lepton_model.evaluation import evaluate

CLASSES = ("cat", "dog", "eel")
# Six images: true labels and the probabilities a model gave them.
LABELS = np.array([0, 0, 0, 1, 1, 2])
PROBABILITIES = np.array(
    [
        [0.8, 0.1, 0.1],  # cat -> cat
        [0.6, 0.3, 0.1],  # cat -> cat
        [0.2, 0.7, 0.1],  # cat -> dog
        [0.1, 0.8, 0.1],  # dog -> dog
        [0.1, 0.2, 0.7],  # dog -> eel
        [0.3, 0.3, 0.4],  # eel -> eel
    ]
)


def test_accuracy_is_the_share_of_correct_top_predictions() -> None:
    evaluation = evaluate(PROBABILITIES, LABELS, CLASSES)

    assert evaluation.accuracy == 4 / 6
    assert evaluation.count == 6


def test_per_class_accuracy_is_recall_per_true_class() -> None:
    evaluation = evaluate(PROBABILITIES, LABELS, CLASSES)

    assert evaluation.per_class_accuracy == {"cat": 2 / 3, "dog": 1 / 2, "eel": 1.0}


def test_confusion_matrix_rows_are_true_classes_columns_predictions() -> None:
    evaluation = evaluate(PROBABILITIES, LABELS, CLASSES)

    assert evaluation.confusion_matrix == ((2, 1, 0), (0, 1, 1), (0, 0, 1))


def test_a_class_without_images_scores_zero_not_nan() -> None:
    evaluation = evaluate(PROBABILITIES, LABELS, (*CLASSES, "fox"))

    assert evaluation.per_class_accuracy["fox"] == 0.0
    assert evaluation.confusion_matrix[3] == (0, 0, 0, 0)


def test_evaluation_serialises_to_json() -> None:
    data = json.loads(json.dumps(evaluate(PROBABILITIES, LABELS, CLASSES).to_dict()))

    assert data["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert data["class_names"] == list(CLASSES)
    assert data["count"] == 6
