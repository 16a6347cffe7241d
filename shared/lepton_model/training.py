"""Training: seeded, early-stopped on a validation split, evaluated on a test split neither
fitting nor early stopping saw."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lepton_model.architecture import build_model
from lepton_model.datasets import Dataset, split_three
from lepton_model.errors import DatasetError
from lepton_model.evaluation import Evaluation, evaluate
from lepton_model.spec import ModelSpec

if TYPE_CHECKING:
    import keras

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainingConfig:
    """Options of one training run; part of the idempotency key with the dataset digest."""

    epochs: int = 30
    batch_size: int = 32
    validation_split: float = 0.2  # of the whole dataset: early stopping's
    test_split: float = 0.15  # of the whole dataset: the reported accuracy and the gate's
    learning_rate: float = 2e-3
    patience: int = 4
    seed: int = 42
    augment: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.epochs <= 1000:
            raise ValueError("epochs must be between 1 and 1000")
        if not 1 <= self.batch_size <= 4096:
            raise ValueError("batch_size must be between 1 and 4096")
        if not 0.0 < self.validation_split < 0.9:
            raise ValueError("validation_split must be in (0, 0.9)")
        if not 0.0 < self.test_split < 0.9:
            raise ValueError("test_split must be in (0, 0.9)")
        if self.validation_split + self.test_split >= 0.9:
            raise ValueError("validation_split + test_split must be under 0.9")
        if not 0.0 < self.learning_rate < 1.0:
            raise ValueError("learning_rate must be in (0, 1)")
        if self.patience < 1:
            raise ValueError("patience must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainedModel:
    """A fitted Keras model with its history, its test evaluation (`evaluation`, the figure to
    report and gate on), its validation evaluation and the test set itself."""

    model: keras.Model
    spec: ModelSpec
    config: TrainingConfig
    class_names: tuple[str, ...]
    history: dict[str, list[float]]
    evaluation: Evaluation
    validation: Evaluation
    test_set: Dataset
    epochs_run: int
    duration_seconds: float
    train_count: int
    images_per_second: float


def train(
    dataset: Dataset,
    spec: ModelSpec | None = None,
    config: TrainingConfig | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainedModel:
    """Fit the CNN on `dataset` and evaluate it on a stratified test split.

    Early stopping watches the validation split's loss and restores the best weights; the test
    split is scored once, at the end. The seed fixes the splits, initialisation, shuffling and
    augmentation.
    """
    import keras

    config = config or TrainingConfig()
    num_classes = len(dataset.class_names)
    spec = spec or ModelSpec(num_classes=num_classes)
    if spec.num_classes != num_classes:
        raise DatasetError(
            f"the model has {spec.num_classes} outputs but the dataset has {num_classes} classes"
        )
    if dataset.images.shape[1:] != spec.preprocessing.input_shape:
        raise DatasetError(
            f"images are {dataset.images.shape[1:]}, the model expects "
            f"{spec.preprocessing.input_shape}"
        )
    splits = split_three(dataset, config.validation_split, config.test_split, config.seed)
    train_set, val_set = splits.train, splits.validation
    keras.utils.set_random_seed(config.seed)
    model = build_model(spec)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True
        )
    ]
    if on_epoch is not None:
        callbacks.append(_EpochReporter(on_epoch))
    x_train, y_train = train_set.images, train_set.labels
    if config.augment:
        x_train, y_train = _augmented(x_train, y_train, config.seed)
    started = time.perf_counter()
    fit = model.fit(
        x_train,
        y_train,
        validation_data=(val_set.images, val_set.labels),
        epochs=config.epochs,
        batch_size=config.batch_size,
        shuffle=True,
        callbacks=callbacks,
        verbose=0,
    )
    duration = time.perf_counter() - started
    history = {k: [float(v) for v in values] for k, values in fit.history.items()}
    epochs_run = len(history.get("loss", []))
    validation = evaluate(
        np.asarray(model(val_set.images, training=False)), val_set.labels, dataset.class_names
    )
    test = splits.test
    evaluation = evaluate(
        np.asarray(model(test.images, training=False)), test.labels, test.class_names
    )
    return TrainedModel(
        model=model,
        spec=spec,
        config=config,
        class_names=dataset.class_names,
        history=history,
        evaluation=evaluation,
        validation=validation,
        test_set=test,
        epochs_run=epochs_run,
        duration_seconds=duration,
        train_count=len(x_train),
        images_per_second=len(x_train) * epochs_run / duration if duration > 0 else 0.0,
    )


def _augmented(images: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The training images plus one shifted copy each (up to 1/14 of the side either way).

    Cheap translation invariance: user images are rarely centred like the training set.
    """
    rng = np.random.default_rng(seed)
    shifted = np.empty_like(images)
    h, w = images.shape[1:3]
    max_shift = max(1, min(h, w) // 14)
    for i, image in enumerate(images):
        dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
        shifted[i] = _shift(image, int(dy), int(dx))
    return np.concatenate([images, shifted]), np.concatenate([labels, labels])


def _shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.full_like(image, image[0, 0])  # fill with the background (a corner pixel)
    h, w = image.shape[:2]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = image[ys, xs]
    return out


class _EpochReporter:
    """Adapts a plain callable to Keras' callback protocol."""

    def __new__(cls, on_epoch: EpochCallback):
        import keras

        class Reporter(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                on_epoch(epoch + 1, {k: float(v) for k, v in (logs or {}).items()})

        return Reporter()
