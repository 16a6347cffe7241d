"""Training-curve and confusion-matrix PNGs (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

from lepton_model.evaluation import Evaluation


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def best_epoch(history: dict[str, list[float]]) -> int | None:
    """The epoch (from 1) whose weights early stopping kept: the lowest validation loss."""
    losses = history.get("val_loss") or []
    return min(range(len(losses)), key=losses.__getitem__) + 1 if losses else None


def plot_history(history: dict[str, list[float]], path: Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, training and validation side by side, the kept epoch
    marked; `title` names the model and version."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), dpi=100)
    best = best_epoch(history)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if history.get(key):
                ax.plot(range(1, len(history[key]) + 1), history[key], style, label=key)
        if best is not None:
            ax.axvline(best, color="grey", linestyle=":", label=f"kept: epoch {best}")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_confusion(evaluation: Evaluation, path: Path, title: str = "") -> Path:
    """Confusion matrix heat map of the test split with counts in the cells."""
    plt = _pyplot()
    k = len(evaluation.class_names)
    size = max(4.0, 0.45 * k + 2.0)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    matrix = evaluation.confusion_matrix
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), evaluation.class_names, rotation=90 if k > 12 else 0)
    ax.set_yticks(range(k), evaluation.class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    heading = f"test accuracy {evaluation.accuracy:.2%} (n={evaluation.count})"
    ax.set_title(f"{title}\n{heading}" if title else heading)
    top = max((max(row) for row in matrix), default=0)
    if k <= 30:
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                if value:
                    colour = "white" if value > top / 2 else "black"
                    ax.text(j, i, str(value), ha="center", va="center", color=colour, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
