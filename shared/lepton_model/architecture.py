"""The CNN factory: a pure function from a ModelSpec to an untrained Keras model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lepton_model.spec import ModelSpec

if TYPE_CHECKING:
    import keras


def build_model(spec: ModelSpec | None = None) -> keras.Model:
    """Build (not compile) the classifier described by `spec`.

    Rescaling to [0, 1] is the model's first layer, so every runtime feeds raw 0..255 pixels and
    training and serving cannot disagree on normalisation.
    """
    import keras
    from keras import layers

    spec = spec or ModelSpec()
    inputs = keras.Input(shape=spec.preprocessing.input_shape, name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for i, filters in enumerate(spec.filters):
        x = layers.Conv2D(
            filters, spec.kernel_size, activation="relu", padding="valid", name=f"conv{i}"
        )(x)
        x = layers.MaxPooling2D(spec.pool_size, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(spec.dense_units, activation="relu", name="dense")(x)
    if spec.dropout:
        x = layers.Dropout(spec.dropout, name="dropout")(x)
    outputs = layers.Dense(spec.num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="lepton_cnn")
