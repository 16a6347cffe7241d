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
    assert assert_png(path).size == (900, 380)


@pytest.mark.parametrize("classes", [2, 40])
def test_confusion_plot_is_a_png(classes: int, tmp_path: Path) -> None:
    names = tuple(f"class{i}" for i in range(classes))
    labels = np.arange(classes * 3) % classes
    probabilities = np.eye(classes)[(labels + (labels % 3 == 0)) % classes]
    evaluation = evaluate(probabilities, labels, names)

    image = assert_png(plot_confusion(evaluation, tmp_path / "confusion.png"))

    assert min(image.size) >= 400


def test_the_kept_epoch_is_the_lowest_validation_loss() -> None:
    from lepton_model.plots import best_epoch

    assert best_epoch({"val_loss": [0.9, 0.4, 0.5, 0.45]}) == 2
    assert best_epoch({"loss": [0.9]}) is None


def test_the_history_plot_names_the_model_and_marks_the_kept_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What is drawn, read back from matplotlib's figure before it is saved."""
    import matplotlib.figure

    drawn: dict[str, object] = {}
    savefig = matplotlib.figure.Figure.savefig

    def capture(figure, *args, **kwargs):
        drawn["title"] = figure._suptitle.get_text() if figure._suptitle else ""
        drawn["legend"] = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
        return savefig(figure, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", capture)
    history = {"loss": [1.0, 0.5, 0.4], "val_loss": [1.1, 0.6, 0.7]}
    plot_history(history, tmp_path / "curves.png", "digits 20261203-1")

    assert drawn["title"] == "digits 20261203-1"
    assert "kept: epoch 2" in drawn["legend"]
