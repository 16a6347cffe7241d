"""The training-curve and confusion-matrix PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lepton_model.evaluation import evaluate
from lepton_model.plots import plot_confusion, plot_history


def assert_png(path: Path) -> Image.Image:
    """`path` is a complete, decodable PNG; returns it opened."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    image = Image.open(path)
    image.load()
    assert image.format == "PNG"
    return image


@pytest.mark.parametrize(
    "history",
    [
        {"loss": [1.0, 0.5, 0.4], "val_loss": [1.1, 0.7, 0.6], "accuracy": [0.5, 0.8, 0.9]},
        {"loss": [0.9, 0.8], "accuracy": [0.5, 0.6]},
    ],
    ids=["full", "training-only"],
)
def test_history_plot_is_a_png(history: dict[str, list[float]], tmp_path: Path) -> None:
    path = plot_history(history, tmp_path / "curves.png")

    assert path == tmp_path / "curves.png"
    assert assert_png(path).size == (900, 350)


@pytest.mark.parametrize("classes", [2, 40])
def test_confusion_plot_is_a_png(classes: int, tmp_path: Path) -> None:
    names = tuple(f"class{i}" for i in range(classes))
    labels = np.arange(classes * 3) % classes
    probabilities = np.eye(classes)[(labels + (labels % 3 == 0)) % classes]
    evaluation = evaluate(probabilities, labels, names)

    image = assert_png(plot_confusion(evaluation, tmp_path / "confusion.png"))

    assert min(image.size) >= 400
