"""Training: seeded, early-stopped, evaluated on a held-out split; the digits reach 97%."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from lepton_model import training
from lepton_model.datasets import Dataset
from lepton_model.errors import DatasetError
from lepton_model.spec import ModelSpec, Preprocessing
from lepton_model.training import TrainedModel, TrainingConfig


def weights_equal(a: TrainedModel, b: TrainedModel) -> bool:
    return all(
        np.array_equal(x, y)
        for x, y in zip(a.model.get_weights(), b.model.get_weights(), strict=True)
    )


def test_the_same_seed_trains_the_same_model(
    tiny_dataset: Dataset,
    tiny_spec: ModelSpec,
    tiny_config: TrainingConfig,
    tiny_trained: TrainedModel,
) -> None:
    again = training.train(tiny_dataset, tiny_spec, tiny_config)

    assert weights_equal(again, tiny_trained)
    assert again.history == tiny_trained.history
    assert again.evaluation == tiny_trained.evaluation


def test_another_seed_trains_another_model(
    tiny_dataset: Dataset,
    tiny_spec: ModelSpec,
    tiny_config: TrainingConfig,
    tiny_trained: TrainedModel,
) -> None:
    config = TrainingConfig(epochs=tiny_config.epochs, batch_size=tiny_config.batch_size, seed=7)

    other = training.train(tiny_dataset, tiny_spec, config)

    assert not weights_equal(other, tiny_trained)


def test_the_returned_model_is_the_best_validation_epoch(tiny_trained: TrainedModel) -> None:
    """Early stopping restores the weights of the epoch with the lowest validation loss."""
    history = tiny_trained.history
    best = int(np.argmin(history["val_loss"]))

    assert tiny_trained.validation.accuracy == pytest.approx(history["val_accuracy"][best])


def test_early_stopping_ends_training_when_validation_loss_stalls(
    tiny_dataset: Dataset, tiny_spec: ModelSpec
) -> None:
    config = TrainingConfig(epochs=200, batch_size=8, patience=1, learning_rate=0.05)

    trained = training.train(tiny_dataset, tiny_spec, config)

    assert trained.epochs_run < 200
    assert trained.epochs_run == len(trained.history["loss"])
    best = int(np.argmin(trained.history["val_loss"]))
    assert trained.epochs_run == best + 1 + config.patience


def test_on_epoch_reports_every_epoch_with_its_metrics(
    tiny_dataset: Dataset, tiny_spec: ModelSpec
) -> None:
    reports: list[tuple[int, dict[str, Any]]] = []

    trained = training.train(
        tiny_dataset,
        tiny_spec,
        TrainingConfig(epochs=2, batch_size=8),
        on_epoch=lambda epoch, logs: reports.append((epoch, logs)),
    )

    assert [epoch for epoch, _ in reports] == [1, 2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(reports[-1][1])
    assert reports[-1][1]["loss"] == pytest.approx(trained.history["loss"][-1])


def test_training_reports_what_it_trained_on(
    tiny_dataset: Dataset, tiny_trained: TrainedModel, tiny_config: TrainingConfig
) -> None:
    """36 images: 6 held out for testing, 6 for validation, 24 trained on, doubled by the
    shifted copies."""
    assert tiny_trained.class_names == tiny_dataset.class_names
    assert tiny_trained.evaluation.count == 6
    assert tiny_trained.validation.count == 6
    assert tiny_trained.train_count == 48
    assert tiny_trained.epochs_run <= tiny_config.epochs
    assert tiny_trained.duration_seconds > 0 and tiny_trained.images_per_second > 0


def test_augmentation_off_trains_on_the_split_alone(
    tiny_dataset: Dataset, tiny_spec: ModelSpec
) -> None:
    config = TrainingConfig(epochs=1, batch_size=8, augment=False)

    assert training.train(tiny_dataset, tiny_spec, config).train_count == 24


@pytest.mark.parametrize(("dy", "dx"), [(2, 0), (0, -2), (-1, 3)])
def test_shifted_copies_move_the_content_and_fill_with_background(dy: int, dx: int) -> None:
    image = np.full((8, 8, 1), 10.0, dtype=np.float32)
    image[3, 4, 0] = 255.0

    shifted = training._shift(image, dy, dx)

    assert shifted[3 + dy, 4 + dx, 0] == 255.0
    assert (shifted == 255.0).sum() == 1
    assert set(np.unique(shifted)) == {10.0, 255.0}


def test_a_spec_with_the_wrong_class_count_is_refused(tiny_dataset: Dataset) -> None:
    with pytest.raises(DatasetError, match="outputs"):
        training.train(tiny_dataset, ModelSpec(num_classes=4), TrainingConfig(epochs=1))


def test_a_spec_with_another_input_shape_is_refused(tiny_dataset: Dataset) -> None:
    spec = ModelSpec(num_classes=3, preprocessing=Preprocessing(height=32, width=32))

    with pytest.raises(DatasetError, match="expects"):
        training.train(tiny_dataset, spec, TrainingConfig(epochs=1))


@pytest.mark.parametrize(
    "options",
    [
        {"epochs": 0},
        {"batch_size": 0},
        {"validation_split": 0.0},
        {"validation_split": 0.95},
        {"test_split": 0.0},
        {"validation_split": 0.5, "test_split": 0.4},
        {"learning_rate": 0.0},
        {"patience": 0},
    ],
    ids=lambda options: f"{next(iter(options))}={next(iter(options.values()))}",
)
def test_training_config_rejects_invalid_values(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        TrainingConfig(**options)


@pytest.mark.slow
def test_digits_cnn_reaches_97_percent_on_the_held_out_split(
    digits_dataset: Dataset, digits_trained: TrainedModel
) -> None:
    """The default CNN and config, trained by the package on the bundled digits."""
    evaluation = digits_trained.evaluation
    summary = (
        f"test accuracy {evaluation.accuracy:.4f} on {evaluation.count} held-out digits, "
        f"{digits_trained.epochs_run} epochs in {digits_trained.duration_seconds:.1f} s"
    )
    print(summary)

    held_out = sum(round(n * 0.15) for n in digits_dataset.class_counts.values())
    assert len(digits_dataset) == 1797
    assert evaluation.count == held_out == 269  # 15% of each class, never trained or stopped on
    assert evaluation.accuracy >= 0.97, summary
    assert min(evaluation.per_class_accuracy.values()) >= 0.9, evaluation.per_class_accuracy
    # The weights kept are the best validation epoch's (early stopping has its own test).
    assert int(np.argmin(digits_trained.history["val_loss"])) + 1 <= digits_trained.epochs_run


def test_the_test_split_is_neither_trained_nor_stopped_on(
    tiny_dataset: Dataset, tiny_trained: TrainedModel, tiny_config: TrainingConfig
) -> None:
    """The images the reported accuracy comes from are none of those fitting or early stopping
    used, and scoring them again gives the reported figure."""
    from lepton_model.datasets import split_three

    splits = split_three(
        tiny_dataset, tiny_config.validation_split, tiny_config.test_split, tiny_config.seed
    )
    test = set(tiny_trained.test_set.sources)
    assert test == set(splits.test.sources)
    assert not test & (set(splits.train.sources) | set(splits.validation.sources))
    predicted = np.argmax(np.asarray(tiny_trained.model(tiny_trained.test_set.images)), axis=1)
    accuracy = float(np.mean(predicted == tiny_trained.test_set.labels))
    assert accuracy == pytest.approx(tiny_trained.evaluation.accuracy)
